//! The YAML event stream of a text, one event at a time, from the same parser (libyaml, as
//! `unsafe-libyaml`) that `serde_yaml_ng` uses: so [`crate::limits`] sees exactly the nesting
//! and aliases the real parse will, and can stop as soon as a limit is crossed. Parsing is
//! lazy: stopping after a few events costs only those events.
//!
//! `serde_yaml_ng` keeps its own event reader private and reads a whole document before
//! looking at it, hence this small wrapper.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use unsafe_libyaml as unsafe_yaml;

/// What the limits need to know of one event. Anchors are kept as their names.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    DocumentStart,
    /// A sequence or a mapping begins.
    CollectionStart {
        anchor: Option<Vec<u8>>,
    },
    CollectionEnd,
    Scalar {
        anchor: Option<Vec<u8>>,
    },
    Alias {
        anchor: Vec<u8>,
    },
    /// Stream start and end, document end: nothing to count.
    Other,
}

/// Where an event starts, 1-based as editors count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub line: u64,
    pub column: u64,
}

/// The events of `input`, until the stream ends or the first syntax error (reported as
/// `Err(())`: the real parse reports the same error with its message).
pub(crate) struct Events<'input> {
    /// Boxed: libyaml keeps a pointer to the parser inside the parser, so it must not move.
    parser: Box<MaybeUninit<unsafe_yaml::yaml_parser_t>>,
    finished: bool,
    /// The parser reads `input` through a raw pointer.
    _input: PhantomData<&'input [u8]>,
}

impl<'input> Events<'input> {
    pub(crate) fn new(input: &'input [u8]) -> Events<'input> {
        let mut parser = Box::new(MaybeUninit::<unsafe_yaml::yaml_parser_t>::uninit());
        let p = parser.as_mut_ptr();
        // SAFETY: `p` points to memory owned by the box; initialize zeroes it and allocates
        // (aborting on allocation failure, so it always succeeds). The input outlives the
        // parser (the lifetime on `Events`).
        unsafe {
            let _ = unsafe_yaml::yaml_parser_initialize(p);
            unsafe_yaml::yaml_parser_set_encoding(p, unsafe_yaml::YAML_UTF8_ENCODING);
            unsafe_yaml::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as _);
        }
        Events {
            parser,
            finished: false,
            _input: PhantomData,
        }
    }
}

impl Iterator for Events<'_> {
    type Item = Result<(Event, Mark), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let p = self.parser.as_mut_ptr();
        let mut raw = MaybeUninit::<unsafe_yaml::yaml_event_t>::uninit();
        // SAFETY: the parser was initialised in `new` and is not deleted before drop; an event
        // filled by a successful `yaml_parser_parse` is read per its type, its strings are
        // NUL-terminated, and it is deleted once read.
        unsafe {
            if unsafe_yaml::yaml_parser_parse(p, raw.as_mut_ptr()).fail {
                self.finished = true;
                return Some(Err(()));
            }
            let raw = raw.as_mut_ptr();
            let anchor = |ptr: *const u8| {
                (!ptr.is_null()).then(|| CStr::from_ptr(ptr.cast()).to_bytes().to_vec())
            };
            let event = match (*raw).type_ {
                unsafe_yaml::YAML_DOCUMENT_START_EVENT => Event::DocumentStart,
                unsafe_yaml::YAML_SEQUENCE_START_EVENT => Event::CollectionStart {
                    anchor: anchor((*raw).data.sequence_start.anchor),
                },
                unsafe_yaml::YAML_MAPPING_START_EVENT => Event::CollectionStart {
                    anchor: anchor((*raw).data.mapping_start.anchor),
                },
                unsafe_yaml::YAML_SEQUENCE_END_EVENT | unsafe_yaml::YAML_MAPPING_END_EVENT => {
                    Event::CollectionEnd
                }
                unsafe_yaml::YAML_SCALAR_EVENT => Event::Scalar {
                    anchor: anchor((*raw).data.scalar.anchor),
                },
                unsafe_yaml::YAML_ALIAS_EVENT => Event::Alias {
                    anchor: anchor((*raw).data.alias.anchor).unwrap_or_default(),
                },
                unsafe_yaml::YAML_STREAM_END_EVENT => {
                    self.finished = true;
                    Event::Other
                }
                _ => Event::Other,
            };
            let mark = Mark {
                line: (*raw).start_mark.line + 1,
                column: (*raw).start_mark.column + 1,
            };
            unsafe_yaml::yaml_event_delete(raw);
            Some(Ok((event, mark)))
        }
    }
}

impl Drop for Events<'_> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, deleted only here.
        unsafe { unsafe_yaml::yaml_parser_delete(self.parser.as_mut_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<Event> {
        Events::new(text.as_bytes())
            .map(|e| e.map(|(event, _)| event))
            .filter(|e| *e != Ok(Event::Other))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|()| panic!("{text:?} does not parse"))
    }

    #[test]
    fn reports_collections_scalars_anchors_and_aliases() {
        let start = |a: Option<&str>| Event::CollectionStart {
            anchor: a.map(|a| a.as_bytes().to_vec()),
        };
        let scalar = |a: Option<&str>| Event::Scalar {
            anchor: a.map(|a| a.as_bytes().to_vec()),
        };
        assert_eq!(
            events("a: &x [1, '[']\nb: *x\n"),
            vec![
                Event::DocumentStart,
                start(None),
                scalar(None),
                start(Some("x")),
                scalar(None),
                scalar(None),
                Event::CollectionEnd,
                scalar(None),
                Event::Alias {
                    anchor: b"x".to_vec()
                },
                Event::CollectionEnd,
            ]
        );
    }

    #[test]
    fn stops_at_a_syntax_error_with_its_position() {
        let all: Vec<_> = Events::new(b"a: [1, 2\n").collect();
        assert_eq!(all.last(), Some(&Err(())));
        let (_, mark) = Events::new(b"\n\n  - x\n").nth(2).unwrap().unwrap();
        assert_eq!(mark, Mark { line: 3, column: 3 });
    }
}
