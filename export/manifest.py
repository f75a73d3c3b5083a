"""What every export carries besides its weights: the model's class and config, and its tokenizer.

The NPZ and torch formats both store this manifest and the tokenizer files' bytes, so a single exported
file is enough to rebuild the model and the exact tokenizer it was trained with. The same files are also
written beside the export for people and other tools; when they are missing (only the .npz or .pt was
copied) the embedded bytes are unpacked into a cache directory keyed by the vocab fingerprint.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import TokenizerSpec, files_fingerprint, load_tokenizer, settings_tag
from data_pipeline.atomic_files import atomic_write_bytes
from pretrain.adapters import ExportAdapter, adapter_named, adapter_of

log = logging.getLogger(__name__)

FORMAT_NAME = "pretrain-service-export"
FORMAT_VERSION = 1


# Fixed names of the tokenizer files inside an export, in fingerprint order (vocab first, then codes).
TOKENIZER_FILES = {"wordpiece": ("vocab.txt",), "bpe": ("bpe.vocab", "bpe.codes")}


@dataclass(frozen=True)
class Manifest:
    """The model class and config, and the tokenizer (kind, lowercasing, fingerprint of its files)."""

    model: str
    config: dict[str, Any]
    tokenizer_kind: str
    tokenizer_lowercase: bool
    tokenizer_fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, raw: Any, source: Path) -> Manifest:
        """Parse a stored manifest; a file of another format or version is a UserError."""
        if not isinstance(raw, Mapping) or raw.get("format") != FORMAT_NAME:
            raise UserError(f"{source}: not an export of this project (no {FORMAT_NAME} manifest); "
                            "export it with `python -m export`")
        if raw.get("version") != FORMAT_VERSION:
            raise UserError(f"{source}: export format version {raw.get('version')}, this code reads "
                            f"{FORMAT_VERSION}: re-export it with this version")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in raw]
        if missing:
            raise UserError(f"{source}: export manifest lacks {', '.join(missing)}: the file is damaged; re-export it")
        manifest = cls(**{name: raw[name] for name in names})
        adapter_named(manifest.model, source)
        if manifest.tokenizer_kind not in TOKENIZER_FILES:
            raise UserError(f"{source}: unknown tokenizer kind {manifest.tokenizer_kind!r}")
        return manifest

    @property
    def adapter(self) -> ExportAdapter:
        return adapter_named(self.model, "export manifest")

    def build_model(self) -> nn.Module:
        """A freshly initialised model of the exported class and config (load the weights next)."""
        try:
            return self.adapter.build(self.config)
        except (TypeError, KeyError) as err:  # a setting this version does not know, or lacks
            raise UserError(f"the export's model config does not fit this code ({err}): load it with the "
                            "version that wrote it") from None


def describe(model: nn.Module, spec: TokenizerSpec) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest of `model` trained with `spec`, and the tokenizer files' bytes by their export names.

    Refuses a tokenizer whose vocab size differs from the model's: the export would pair the weights
    with the wrong ids.
    """
    adapter = adapter_of(model)
    vocab_size = adapter.encoder(model).cfg.vocab_size
    tokenizer = load_tokenizer(spec)
    if tokenizer.vocab_size != vocab_size:
        raise UserError(f"tokenizer {spec.vocab} has {tokenizer.vocab_size} tokens but the model's vocab_size "
                        f"is {vocab_size}: export with the tokenizer the model was trained with")
    local = tokenizer.spec   # the files themselves, fetched if the run named them by URI
    sources = (local.vocab,) if spec.kind == "wordpiece" else (local.vocab, local.codes)
    files = {export_name: Path(source).read_bytes()
             for export_name, source in zip(TOKENIZER_FILES[spec.kind], sources)}
    manifest = Manifest(model=adapter.name, config=adapter.config_of(model), tokenizer_kind=spec.kind,
                        tokenizer_lowercase=spec.lowercase, tokenizer_fingerprint=tokenizer.fingerprint)
    return manifest, files


def write_tokenizer_files(files: Mapping[str, bytes], directory: Path) -> None:
    for export_name, data in files.items():
        atomic_write_bytes(directory / export_name, data)


def _spec_in(manifest: Manifest, directory: Path) -> TokenizerSpec | None:
    """The spec of the manifest's tokenizer files in `directory`, if they are all there and unchanged."""
    paths = [directory / name for name in TOKENIZER_FILES[manifest.tokenizer_kind]]
    settings = settings_tag(manifest.tokenizer_kind, manifest.tokenizer_lowercase)
    if (not all(path.is_file() for path in paths)
            or files_fingerprint(*paths, settings=settings) != manifest.tokenizer_fingerprint):
        return None
    return TokenizerSpec(kind=manifest.tokenizer_kind, vocab=str(paths[0]),
                         codes=str(paths[1]) if len(paths) > 1 else None, lowercase=manifest.tokenizer_lowercase)


def resolve_tokenizer(manifest: Manifest, files: Mapping[str, bytes], beside: Path) -> TokenizerSpec:
    """The tokenizer spec of an export: its files in `beside` if they match the fingerprint, else the
    embedded bytes unpacked into a per-fingerprint cache directory."""
    spec = _spec_in(manifest, beside)
    if spec is not None:
        return spec
    expected = TOKENIZER_FILES[manifest.tokenizer_kind]
    if set(files) != set(expected):
        raise UserError(f"{beside}: the export's tokenizer files ({', '.join(expected)}) are neither beside it "
                        "nor embedded in it: copy them next to the export")
    cache = Path(tempfile.gettempdir()) / "pretrain-service-tokenizers" / manifest.tokenizer_fingerprint
    spec = _spec_in(manifest, cache)
    if spec is None:
        write_tokenizer_files(files, cache)
        spec = _spec_in(manifest, cache)
    if spec is None:
        raise UserError(f"the tokenizer files embedded in the export in {beside} do not match its fingerprint "
                        f"{manifest.tokenizer_fingerprint}: the export is damaged; re-export it")
    log.info("tokenizer files of the export in %s unpacked into %s", beside, cache)
    return spec
