"""A small, faithful subset of `kustomize build` (v5) covering exactly the features k8s/ uses.

No kustomize or kubectl binary can be installed on the CI box, so the tests render k8s/ with this.
Supported kustomization fields:
- resources: YAML files (multi-document) and directories holding a kustomization.yaml;
- namePrefix, applied to every resource of its level and the levels below;
- configMapGenerator: `files` entries (`path` or `key=path`), behavior create (default) or replace,
  and the content-hash name suffix, computed the way kustomize does;
- configurations: nameReference field specs for ConfigMaps (collected from every level, as kustomize
  does), used to rewrite references to a generated ConfigMap's final name;
- patches: JSON 6902 (add, remove, replace), inline or from a file, with a target kind and name.
Any other field, or an unsupported variant of these, raises: a manifest cannot use a feature this
renderer would silently ignore. test_kustomize.py compares the output with `kubectl kustomize`
wherever kubectl is installed.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_SUPPORTED = {"apiVersion", "kind", "resources", "namePrefix", "configMapGenerator", "configurations",
              "patches"}


class KustomizeError(Exception):
    """A kustomization this subset cannot render (or kustomize itself would refuse)."""


@dataclass
class _Generated:
    """A generated ConfigMap: its generator name, the names it had, and whether it gets a hash suffix."""

    resource: dict[str, Any]
    names: list[str] = field(default_factory=list)


@dataclass
class _Level:
    resources: list[dict[str, Any]] = field(default_factory=list)
    generated: list[_Generated] = field(default_factory=list)
    name_references: list[dict[str, Any]] = field(default_factory=list)


def build(directory: Path) -> list[dict[str, Any]]:
    """The resources `kustomize build directory` prints (in no particular order)."""
    level = _build_level(Path(directory))
    final_names: dict[str, str] = {}
    for generated in level.generated:
        cm = generated.resource
        cm["metadata"]["name"] = f"{cm['metadata']['name']}-{config_map_hash(cm)}"
        final_names.update({old: cm["metadata"]["name"] for old in generated.names})
    for spec in level.name_references:
        for resource in level.resources:
            if resource.get("kind") == spec["kind"]:
                _rewrite(resource, spec["path"].split("/"), final_names)
    return level.resources


def config_map_hash(config_map: dict[str, Any]) -> str:
    """kustomize's ConfigMap name suffix: sha256 of the JSON {data, kind, name}, 10 hex digits with
    0, 1, 3, a, e spelled g, h, k, m, t. kustomize v5 hashes with an empty name (checked against
    `kubectl kustomize`); Go's encoder escapes <, > and & (and U+2028/9) where Python's does not."""
    encoded = json.dumps({"data": config_map.get("data", {}), "kind": "ConfigMap", "name": ""},
                         sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _build_level(directory: Path) -> _Level:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    kustomization = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unsupported = set(kustomization) - _SUPPORTED
    if unsupported:
        raise KustomizeError(f"{path}: fields {sorted(unsupported)} are outside the supported subset")
    level = _Level()
    for entry in kustomization.get("resources", []):
        target = directory / entry
        if target.is_dir():
            below = _build_level(target)
            level.resources += below.resources
            level.generated += below.generated
            level.name_references += below.name_references
        else:
            level.resources += _load_documents(target)
    for entry in kustomization.get("configurations", []):
        config = yaml.safe_load((directory / entry).read_text(encoding="utf-8"))
        if set(config) != {"nameReference"}:
            raise KustomizeError(f"{directory / entry}: only nameReference configurations are supported")
        for reference in config["nameReference"]:
            if reference["kind"] != "ConfigMap":
                raise KustomizeError(f"{directory / entry}: only references to ConfigMaps are supported")
            level.name_references += reference["fieldSpecs"]
    for generator in kustomization.get("configMapGenerator", []):
        _generate(level, directory, generator)
    for patch in kustomization.get("patches", []):
        _patch(level.resources, directory, patch)
    prefix = kustomization.get("namePrefix", "")
    for resource in level.resources:
        resource["metadata"]["name"] = prefix + resource["metadata"]["name"]
    for generated in level.generated:
        generated.names.append(generated.resource["metadata"]["name"])
    return level


def _load_documents(path: Path) -> list[dict[str, Any]]:
    # The JSON round trip un-shares YAML anchors (kustomize de-anchors too), so a patch to one
    # aliased node does not change the others.
    documents = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return [json.loads(json.dumps(doc)) for doc in documents if doc]


def _generate(level: _Level, directory: Path, generator: dict[str, Any]) -> None:
    if set(generator) - {"name", "files", "behavior"}:
        raise KustomizeError(f"{directory}: configMapGenerator supports name, files and behavior only")
    data = {}
    for entry in generator["files"]:
        key, _, file = entry.rpartition("=")
        data[key or Path(file).name] = (directory / file).read_text(encoding="utf-8")
    name, behavior = generator["name"], generator.get("behavior", "create")
    existing = [g for g in level.generated if g.names[0] == name]
    if behavior == "create":
        if existing:
            raise KustomizeError(f"{directory}: configMapGenerator {name} exists already; use behavior: replace")
        resource = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        level.resources.append(resource)
        level.generated.append(_Generated(resource, [name]))
    elif behavior == "replace":
        if not existing:
            raise KustomizeError(f"{directory}: configMapGenerator {name} has nothing to replace")
        existing[0].resource["data"] = data
    else:
        raise KustomizeError(f"{directory}: configMapGenerator behavior {behavior!r} is not supported")


def _patch(resources: list[dict[str, Any]], directory: Path, patch: dict[str, Any]) -> None:
    target = patch.get("target", {})
    if set(target) - {"kind", "name"} or set(patch) - {"target", "patch", "path"}:
        raise KustomizeError(f"{directory}: patches support a target kind/name and patch or path only")
    text = patch["patch"] if "patch" in patch else (directory / patch["path"]).read_text(encoding="utf-8")
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise KustomizeError(f"{directory}: only JSON 6902 patches (a list of operations) are supported")
    matched = [r for r in resources if target.get("kind", r["kind"]) == r["kind"]
               and target.get("name", r["metadata"]["name"]) == r["metadata"]["name"]]
    if not matched:
        raise KustomizeError(f"{directory}: patch target {target} matches no resource")
    for resource in matched:
        for operation in operations:
            _apply_operation(resource, operation)


def _apply_operation(document: dict[str, Any], operation: dict[str, Any]) -> None:
    op = operation["op"]
    if op not in ("add", "remove", "replace"):
        raise KustomizeError(f"JSON patch op {op!r} is not supported")
    *parents, last = [part.replace("~1", "/").replace("~0", "~")
                      for part in operation["path"].lstrip("/").split("/")]
    node: Any = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, operation["value"])
        elif op == "remove":
            del node[index]
        else:
            node[index] = operation["value"]
    elif op == "add":
        node[last] = operation["value"]
    else:
        if last not in node:
            raise KustomizeError(f"JSON patch {op} {operation['path']}: no such field")
        if op == "remove":
            del node[last]
        else:
            node[last] = operation["value"]


def _rewrite(node: Any, path: list[str], names: dict[str, str]) -> None:
    """Replace a ConfigMap name at `path` (lists are walked through) with its final name."""
    if isinstance(node, list):
        for item in node:
            _rewrite(item, path, names)
        return
    if not isinstance(node, dict) or path[0] not in node:
        return
    if len(path) == 1:
        node[path[0]] = names.get(node[path[0]], node[path[0]])
    else:
        _rewrite(node[path[0]], path[1:], names)
