"""The dataset spec: a YAML file that says how to turn a directory of HDF5 files into manifests.

`sweepcat inspect` writes a draft; `sweepcat manifest` reads it. A spec holds
one or more *sources* (a group of files sharing one layout); a dataset with
more than one source is "mixed".
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .atomic import replacing
from .contract import NAN_POLICIES, key_problem, to_key
from .errors import SweepcatError

LAYOUTS = {
    "A": "one file per artifact (parameters as file attributes)",
    "B": "many entities batched along axis 0 of one dataset",
    "C": "one file per entity holding several datasets",
}
DEFAULT_HUID = {"A": "{stem}", "B": "{stem}_{index:04d}", "C": "{stem}"}


@dataclass
class ArtifactSpec:
    dataset: str
    shape: list[int] | None = None  # per entity (axis 0 of a batched dataset removed)
    dtype: str | None = None
    axes: list[str | None] | None = None  # shared-axis name per dimension


@dataclass
class SourceSpec:
    layout: str
    files: list[str]  # glob patterns relative to the root (``**`` allowed)
    artifacts: dict[str, ArtifactSpec]
    params_group: str | None = "/params"  # None: parameters are root attributes (layout A)
    params: list[str] | None = None  # None: every parameter found
    huid: str | None = None  # format template: {stem}, {parent}, {index}
    stem_pattern: str | None = None  # regex with group 'stem' applied to file stems (A: strip type suffix)

    def huid_template(self) -> str:
        return self.huid or DEFAULT_HUID[self.layout]


@dataclass
class DatasetSpec:
    label: str
    root: str
    sources: list[SourceSpec]
    key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    shared_axes: dict[str, dict[str, str]] = field(default_factory=dict)
    key_template: str = "H_{huid}"
    nan_policy: str = "error"

    @property
    def catalog_key(self) -> str:
        return self.key or to_key(self.label)

    @property
    def layout(self) -> str:
        layouts = sorted({s.layout for s in self.sources})
        return layouts[0] if len(layouts) == 1 else "mixed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for src in d["sources"]:
            for art in src["artifacts"].values():
                for k in [k for k, v in art.items() if v is None]:
                    del art[k]
            for k in [k for k, v in src.items() if v is None and k != "params_group"]:
                del src[k]
        return d


def _fail(path: str, what: str) -> SweepcatError:
    return SweepcatError(f"spec {path}: {what}",
                         "fix the spec (re-run `sweepcat inspect DIR -o SPEC.yml` for a fresh draft)")


def parse_spec(data: Any, where: str = "<spec>", base: Path | None = None) -> DatasetSpec:
    if not isinstance(data, dict):
        raise _fail(where, "top level must be a mapping")
    for req in ("label", "root", "sources"):
        if req not in data:
            raise _fail(where, f"missing required field {req!r}")
    root = Path(os.path.expanduser(str(data["root"])))
    if not root.is_absolute() and base is not None:
        root = (base / root).resolve()
    sources = []
    for i, src in enumerate(data["sources"] or []):
        if not isinstance(src, dict):
            raise _fail(where, f"sources[{i}] must be a mapping")
        layout = str(src.get("layout", ""))
        if layout not in LAYOUTS:
            raise _fail(where, f"sources[{i}].layout is {layout!r}; use one of A, B, C")
        files = src.get("files")
        if isinstance(files, str):
            files = [files]
        if not files:
            raise _fail(where, f"sources[{i}].files is empty; give glob patterns such as '*.h5'")
        for f in files:
            if str(f).startswith("/"):
                raise _fail(where, f"sources[{i}].files has the absolute pattern {f!r}; patterns are relative to "
                            f"'root' ({root}): write e.g. {Path(str(f)).name!r} and set root to its directory")
        stem_pattern = src.get("stem_pattern")
        if stem_pattern is not None:
            _check_stem_pattern(where, i, str(stem_pattern))
        arts = src.get("artifacts") or {}
        if not arts:
            raise _fail(where, f"sources[{i}].artifacts is empty; map type -> {{dataset: /path}}")
        artifacts = {}
        for t, a in arts.items():
            if isinstance(a, str):
                a = {"dataset": a}
            if not isinstance(a, dict) or "dataset" not in a:
                raise _fail(where, f"sources[{i}].artifacts.{t} needs a 'dataset'")
            artifacts[str(t)] = ArtifactSpec(
                dataset=str(a["dataset"]),
                shape=list(a["shape"]) if a.get("shape") is not None else None,
                dtype=a.get("dtype"),
                axes=list(a["axes"]) if a.get("axes") is not None else None,
            )
        sources.append(SourceSpec(
            layout=layout,
            files=[str(f) for f in files],
            artifacts=artifacts,
            params_group=src.get("params_group", "/params" if layout != "A" else None),
            params=src.get("params"),
            huid=src.get("huid"),
            stem_pattern=None if stem_pattern is None else str(stem_pattern),
        ))
    if not sources:
        raise _fail(where, "no sources")
    key = data.get("key")
    if key is not None and key_problem(str(key)):
        raise _fail(where, f"key {key!r} cannot name the dataset (and its manifest files): it {key_problem(str(key))}")
    nan_policy = data.get("nan_policy", "error")
    if nan_policy not in NAN_POLICIES:
        raise _fail(where, f"nan_policy {nan_policy!r}; use one of {', '.join(NAN_POLICIES)}")
    return DatasetSpec(
        label=str(data["label"]),
        root=str(root),
        sources=sources,
        key=None if key is None else str(key),
        metadata=dict(data.get("metadata") or {}),
        shared_axes=dict(data.get("shared_axes") or {}),
        key_template=str(data.get("key_template", "H_{huid}")),
        nan_policy=nan_policy,
    )


def _check_stem_pattern(where: str, i: int, pattern: str) -> None:
    """A stem_pattern must compile and name the part of the file stem that identifies the entity."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise _fail(where, f"sources[{i}].stem_pattern {pattern!r} is not a valid regular expression ({exc})") \
            from None
    if "stem" not in compiled.groupindex:
        raise _fail(where, f"sources[{i}].stem_pattern {pattern!r} has no group named 'stem'; write the part that "
                    "names the entity as (?P<stem>...), e.g. '(?P<stem>.+)_rixs'")


def load_spec(path: str | os.PathLike) -> DatasetSpec:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SweepcatError(f"{p}: no such spec file", "write one with `sweepcat inspect DIR -o SPEC.yml`") from None
    except yaml.YAMLError as exc:
        raise SweepcatError(f"{p}: not valid YAML ({exc})", "fix the syntax") from None
    return parse_spec(data, str(p), base=p.parent.resolve())


SPEC_HEADER = """\
# sweepcat dataset spec (draft written by `sweepcat inspect`).
# Check it, edit what is wrong, then:  sweepcat manifest {path} -o manifests/
# layouts: A = one file per artifact, B = batched along axis 0, C = one file per entity.
# huid templates use {{stem}} (file name without suffix), {{parent}} (directory), {{index}} (row, B only).
"""


def dump_spec(spec: DatasetSpec, path: str | os.PathLike | None = None) -> str:
    text = yaml.safe_dump(spec.to_dict(), sort_keys=False, default_flow_style=None, width=100)
    text = SPEC_HEADER.format(path=path or "SPEC.yml") + text
    if path is not None:
        with replacing(path) as tmp:
            tmp.write_text(text)
    return text
