//! Request-level security on what a request carries: the token found in its headers or
//! query (size cap, base64, header and claims JSON, algorithm, key choice, signature, time
//! and audience checks), the request judged by policies using every HTTP field and `when`
//! key (claims from the input too), path normalisation, and the input read as a JWKS and as
//! a `when` key. See `mesh_api::fuzzing::exercise_request_security` for the input format;
//! the seeds carry valid tokens, so mutations start past the signature check.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_api::fuzzing::exercise_request_security(&String::from_utf8_lossy(data));
});
