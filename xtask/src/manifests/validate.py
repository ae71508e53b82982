"""Validates every Kubernetes manifest under a directory, offline and strictly.

Run by `cargo xtask validate-manifests` with the Python of a virtualenv holding the pinned
`kubernetes-validate` (which ships the Kubernetes OpenAPI schemas as JSON schemas).

    python validate.py DEPLOY_DIR KUBERNETES_VERSION

- Every document of every *.yaml file (kustomization.yaml aside) must be a resource whose
  kind the schemas of that Kubernetes version know (the library only warns about an unknown
  kind, so a misspelt kind would pass it; here it fails), and must validate in strict mode:
  a field the schema does not have is an error, as the API server's strict field validation
  would make it.
- A key given twice in one mapping is an error (YAML loaders keep the last one silently).
- Each kustomization.yaml may only list files or kustomization directories that exist, and
  every resource file must be listed by one, so that `kubectl apply -k` installs what was
  validated.

Exits 1 listing every problem, 0 when there is none.
"""

import os
import sys

import kubernetes_validate
import yaml


class StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys instead of keeping the last."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_documents(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.load_all(f, Loader=StrictLoader) if doc is not None]


def describe(doc):
    name = (doc.get("metadata") or {}).get("name", "?")
    return f"{doc.get('kind', '?')}/{name}"


def check_resource(doc, version):
    """Problems with one document, as strings (empty when it is valid)."""
    if not isinstance(doc, dict):
        return ["a document is not a mapping"]
    missing = [k for k in ("apiVersion", "kind") if not doc.get(k)]
    if missing or not (doc.get("metadata") or {}).get("name"):
        return ["a document lacks " + ", ".join(missing + ["metadata.name"])]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        field = ".".join(str(p) for p in e.path) or "(top level)"
        return [f"{describe(doc)}: {field}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{describe(doc)}: no schema for kind {doc['kind']} of {doc['apiVersion']} "
                f"in Kubernetes {version} (misspelt kind or apiVersion?)"]
    return []


def check_kustomization(path, docs):
    """Problems with one kustomization.yaml, and the resource files it lists."""
    directory = os.path.dirname(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        return ["is not a single mapping"], set()
    problems, listed = [], set()
    for entry in docs[0].get("resources") or []:
        target = os.path.normpath(os.path.join(directory, str(entry)))
        if os.path.isfile(target):
            listed.add(target)
        elif not os.path.isfile(os.path.join(target, "kustomization.yaml")):
            problems.append(f"resources entry {entry!r} is neither a file nor a directory "
                            "with a kustomization.yaml")
    return problems, listed


def main():
    root, version = sys.argv[1], sys.argv[2]
    problems, resource_files, listed = {}, [], set()
    for directory, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            if not name.endswith((".yaml", ".yml")):
                continue
            path = os.path.normpath(os.path.join(directory, name))
            try:
                docs = load_documents(path)
            except yaml.YAMLError as e:
                problems[path] = [f"not valid YAML: {e}"]
                continue
            if name == "kustomization.yaml":
                found, files_listed = check_kustomization(path, docs)
                listed |= files_listed
            else:
                resource_files.append(path)
                found = [p for doc in docs for p in check_resource(doc, version)]
                if not docs:
                    found.append("holds no resource")
                else:
                    print(f"ok   {path}: " + ", ".join(describe(d) for d in docs
                                                      if isinstance(d, dict)))
            if found:
                problems[path] = found
    for path in resource_files:
        if path not in listed:
            problems.setdefault(path, []).append("no kustomization.yaml lists this file")
    for path, found in problems.items():
        for problem in found:
            print(f"FAIL {path}: {problem}")
    if not resource_files:
        print(f"FAIL {root}: no manifests found")
        return 1
    if problems:
        print(f"{len(problems)} of the manifests under {root} are invalid "
              f"(Kubernetes {version}, strict)")
        return 1
    print(f"{len(resource_files)} manifest files valid against Kubernetes {version} (strict)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
