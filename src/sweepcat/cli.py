"""The `sweepcat` command line: a thin layer over the library.

Every command prints errors as plain sentences (culprit, then what to do) and
exits non-zero; a traceback means a bug in sweepcat.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import SweepcatError

app = typer.Typer(
    help=(
        "Make a simulation parameter sweep searchable and servable.\n\n"
        "The flow: HDF5 files -> inspect (draft spec) -> manifest (Parquet) -> catalog -> server.\n\n"
        "Try it:\n\n"
        "  sweepcat demo-data demo/data\n\n"
        "  sweepcat inspect demo/data/NiPS3_batched -o demo/nips3.yml\n\n"
        "  sweepcat manifest demo/nips3.yml -o demo/manifests"
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        import tiled

        out.print(f"sweepcat {version('sweepcat')} (Tiled {tiled.__version__})", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print sweepcat's and Tiled's versions and exit.")) -> None:
    """Make a simulation parameter sweep searchable and servable."""


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A bar with rate and ETA on terminals; silent when output is piped."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextlib.contextmanager
def phase_progress(what: str) -> Iterator[Callable[[str, int, int], None]]:
    """A bar per phase of long work ((phase, done, total) callbacks), with percentage and ETA on terminals."""
    columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        def advance(phase: str, done: int, total: int) -> None:
            task = tasks.get(phase)
            if task is None:
                task = tasks[phase] = bar.add_task(f"{what}: {phase}", total=max(total, 1))
            bar.update(task, completed=done, total=max(total, 1))
        yield advance


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except SweepcatError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        err.print("interrupted; nothing half-written was left behind")
        raise typer.Exit(code=130) from None


@app.command("demo-data")
def demo_data(
    out_dir: Path = typer.Argument(..., help="Directory to write the synthetic sweeps into."),
    scale: str = typer.Option("small", "--scale", help="small (a few hundred entities) or seed (100,000 batched, "
                              "~9 GB with every array written)."),
    sparse: bool = typer.Option(False, "--sparse", help="Write arrays into the first 4 batched files only; the "
                                "rest read as fill values without touching the disk. Quick tests only: reads of "
                                "such data are not real reads."),
) -> None:
    """Write synthetic sweeps in all three layouts, shaped like the NiPS3 seed data.

    Creates OUT/NiPS3_batched (layout B), OUT/NiPS3_per_artifact (A) and
    OUT/NiPS3_per_entity (C).

    Example:  sweepcat demo-data demo/data --scale seed
    """
    from . import demodata

    with friendly_errors():
        if scale not in demodata.SCALES:
            raise SweepcatError(f"unknown scale {scale!r}", f"use one of {', '.join(demodata.SCALES)}")
        t0 = time.perf_counter()
        with progress_bar(f"writing {scale} demo data", demodata.work_units(demodata.SCALES[scale])) as advance:
            dirs = demodata.write_demo(out_dir, scale, progress=advance, sparse=sparse)
        for layout, path in dirs.items():
            out.print(f"layout {layout}: {path}")
        out.print(f"done in {time.perf_counter() - t0:.1f} s; next: sweepcat inspect {dirs['B']} -o spec.yml")


@app.command("inspect")
def inspect_cmd(
    directory: Path = typer.Argument(..., help="Directory holding the HDF5 files of one dataset."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the draft dataset spec (YAML) here."),
    tree: bool = typer.Option(True, help="Print the schema tree of a representative file."),
) -> None:
    """Explore HDF5 files: schema tree, layout (A, B, C or mixed), draft spec, data-provider report.

    Exits 1 when a constraint fails (not HDF5, corrupt, ragged, NaN, duplicate IDs);
    the report names the files and says what to ask the provider.

    Example:  sweepcat inspect /data/NiPS3 -o nips3.yml
    """
    from . import inspect as insp
    from .h5scan import list_files
    from .spec import dump_spec

    with friendly_errors():
        t0 = time.perf_counter()
        total = len(list_files(directory)) if directory.is_dir() else 0
        with progress_bar("reading HDF5 structure", total) as advance:
            report = insp.inspect_directory(directory, progress=advance)
        if tree and report.representative is not None:
            out.print(f"[bold]schema of {report.representative.rel}[/]")
            out.print(insp.schema_tree(report.representative), markup=False, highlight=False)
            out.print()
        out.print(insp.summary(report), markup=False, highlight=False)
        for note in report.notes:
            out.print(f"note: {note}", markup=False, highlight=False)
        out.print(insp.provider_report(report), markup=False, highlight=False)
        if output is not None and report.spec is not None:
            dump_spec(report.spec, output)
            out.print(f"draft spec written to {output}; next: sweepcat manifest {output} -o manifests/")
        out.print(f"inspected in {time.perf_counter() - t0:.2f} s")
        if not report.ok:
            raise typer.Exit(code=1)


@app.command("manifest")
def manifest_cmd(
    spec_file: Optional[Path] = typer.Argument(None, help="Dataset spec YAML (from `sweepcat inspect -o`)."),
    output: Path = typer.Option(..., "-o", "--output",
                                help="Directory for NAME_hamiltonians.parquet and NAME_artifacts.parquet."),
    limit: Optional[int] = typer.Option(None, "-n", "--limit", min=1, help="Only the first N Hamiltonians (to try "
                                        "things out; never replaces manifests already in OUTPUT unless --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="With -n: replace manifests already in OUTPUT."),
    generator: Optional[str] = typer.Option(None, "--generator", help="Plug-in generator module:function with "
                                            "generate(output_dir, n_hamiltonians) -> (ham_df, art_df)."),
    root: Optional[Path] = typer.Option(None, "--root",
                                        help="With --generator: the data root that 'file' paths are relative to."),
    label: Optional[str] = typer.Option(None, "--label",
                                        help="With --generator: the dataset label (default: root's name)."),
    nan_policy: Optional[str] = typer.Option(None, "--nan-policy", help="NaN/inf parameters: error (default), "
                                             "null (store null) or skip (drop the entity)."),
) -> None:
    """Build the two Parquet manifests from a spec (or a plug-in generator), validated before writing.

    Nothing is written when any file or row breaks the contract; files are
    written atomically.

    Examples:

      sweepcat manifest nips3.yml -o manifests/

      sweepcat manifest --generator gen_spinwave.py:generate --root /data/spinwave -o manifests/
    """
    from .contract import NAN_POLICIES, write_manifests
    from .manifest import build_manifests, run_generator
    from .spec import load_spec

    with friendly_errors():
        if nan_policy is not None and nan_policy not in NAN_POLICIES:
            raise SweepcatError(f"--nan-policy {nan_policy!r} is unknown", f"use one of {', '.join(NAN_POLICIES)}")
        t0 = time.perf_counter()
        if generator:
            if root is None:
                raise SweepcatError("--generator needs --root",
                                    "pass the directory that artifact 'file' paths are relative to")
            manifests = run_generator(generator, output, root=root, label=label, limit=limit,
                                      nan_policy=nan_policy or "error")
        else:
            if spec_file is None:
                raise SweepcatError("no spec given",
                                    "pass SPEC.yml (write one with `sweepcat inspect DIR -o SPEC.yml`) or --generator")
            spec = load_spec(spec_file)
            from .manifest import source_files

            total = sum(len(source_files(Path(spec.root), s, [])) for s in spec.sources)
            with progress_bar("reading parameters", total) as advance:
                manifests = build_manifests(spec, limit=limit, nan_policy=nan_policy, progress=advance,
                                            spec_path=str(spec_file))
        ham_path, art_path = write_manifests(output, manifests, trial=limit is not None and not overwrite)
        skipped = manifests.description.provenance.get("skipped_nan", 0)
        out.print(f"{manifests.ham.num_rows} Hamiltonians -> {ham_path}")
        out.print(f"{manifests.art.num_rows} artifacts   -> {art_path}")
        if skipped:
            out.print(f"skipped {skipped} entities with NaN/inf parameters (--nan-policy skip)")
        out.print(f"done in {time.perf_counter() - t0:.2f} s")


def _manifest_pairs(manifests: list[Path] | None, ham: Path | None, art: Path | None, label: str | None,
                    example: str) -> list[tuple[Path, Path | None]]:
    """The manifest pairs a command was given: a directory (every pair in it), two files, or the guide's options."""
    from .contract import find_manifest_pairs

    paths = list(manifests or [])
    if ham or art:
        if not (ham and art) or paths:
            raise SweepcatError("--ham-manifest and --art-manifest go together, without positional manifests",
                                "pass both options, or a manifest directory")
        paths = [ham, art]
    if not paths:
        raise SweepcatError("no manifests given", example)
    for p in paths:
        if not p.exists():
            raise SweepcatError(f"{p}: no such file or directory", example)
    dirs = [p for p in paths if p.is_dir()]
    if dirs and len(dirs) != len(paths):
        raise SweepcatError(f"{', '.join(map(str, paths))}: a mix of directories and files",
                            "pass manifest directories, or the two Parquet files of one dataset")
    if dirs:
        pairs: list[tuple[Path, Path | None]] = [pair for d in dirs for pair in find_manifest_pairs(d)]
        if label and len(pairs) > 1:
            raise SweepcatError("--label names one dataset, the directories hold several",
                                "pass the two Parquet files of the dataset to relabel")
        return pairs
    if len(paths) != 2:
        raise SweepcatError(f"expected a manifest directory or two Parquet files, got {len(paths)} file(s)", example)
    return [(paths[0], paths[1])]


CATALOG_HELP = "Catalog: a SQLite file (default ./sweepcat.db) or postgresql://user@host:port/db."


@app.command("ingest")
def ingest_cmd(
    manifests: list[Path] = typer.Argument(None, help="A manifest directory, or HAM.parquet ART.parquet."),
    catalog: str = typer.Option("sweepcat.db", "--catalog", "-c", help=CATALOG_HELP),
    ham_manifest: Optional[Path] = typer.Option(None, "--ham-manifest", help="Hamiltonians Parquet (guide's form)."),
    art_manifest: Optional[Path] = typer.Option(None, "--art-manifest", help="Artifacts Parquet (guide's form)."),
    base_dir: Optional[Path] = typer.Option(None, "--base-dir", help="Data root, for manifests without a sweepcat "
                                            "description (overrides it otherwise)."),
    label: Optional[str] = typer.Option(None, "--label",
                                        help="Dataset label/key in the catalog (default: from the manifests)."),
    update: bool = typer.Option(False, "--update", help="Refresh the metadata of Hamiltonians already in the catalog."),
    prune: bool = typer.Option(False, "--prune",
                               help="Remove Hamiltonians that are no longer in the manifest (catalog only)."),
    verify_all: bool = typer.Option(False, "--verify-all",
                                    help="Open every HDF5 file to check it (default: up to 2,000 files, sampled)."),
    move_root: bool = typer.Option(False, "--move-root", help="The dataset's files moved: record the manifests' "
                                   "root as its new data root (its files are checked there like a new dataset's)."),
    wait: float = typer.Option(30.0, "--wait", min=0, help="Seconds to wait for another writer (an ingest, a "
                               "register, a server write) to release the catalog before giving up."),
) -> None:
    """Write manifests straight into Tiled's catalog database: fast, atomic, idempotent.

    One transaction per dataset: killed at any point, the catalog stays as it
    was. Re-running adds only what is new. Nothing is written when a file,
    dataset, index, shape or dtype disagrees with the manifest.

    Examples:

      sweepcat ingest demo/manifests --catalog sweepcat.db

      sweepcat ingest --ham-manifest h.parquet --art-manifest a.parquet --base-dir /data/x --catalog postgresql://me@db:5432/cat
    """
    from .catalog.ingest import ingest
    from .contract import read_manifests

    with friendly_errors():
        pairs = _manifest_pairs(manifests, ham_manifest, art_manifest, label,
                                "e.g. sweepcat ingest demo/manifests --catalog sweepcat.db")
        for ham_path, art_path in pairs:
            m = read_manifests(ham_path, art_path, base_dir=base_dir, label=label)
            with phase_progress(f"ingest {m.description.key}") as advance:
                result = ingest(m, catalog, update=update, prune=prune, move_root=move_root,
                                verify_sample=None if verify_all else 2000, progress=advance, wait=wait)
            if result.created_catalog:
                out.print(f"created catalog {result.catalog}")
            out.print(str(result))


@app.command("register")
def register_cmd(
    manifests: list[Path] = typer.Argument(None, help="A manifest directory, or HAM.parquet ART.parquet."),
    url: str = typer.Option(..., "--url", help="The running server, e.g. http://127.0.0.1:8000"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SWEEPCAT_API_KEY",
                                          help="Tiled API key (or SWEEPCAT_API_KEY)."),
    ham_manifest: Optional[Path] = typer.Option(None, "--ham-manifest", help="Hamiltonians Parquet (guide's form)."),
    art_manifest: Optional[Path] = typer.Option(None, "--art-manifest", help="Artifacts Parquet (guide's form)."),
    base_dir: Optional[Path] = typer.Option(None, "--base-dir",
                                            help="Data root, for manifests without a sweepcat description."),
    label: Optional[str] = typer.Option(None, "--label", help="Dataset label/key (default: from the manifests)."),
    update: bool = typer.Option(False, "--update", help="Refresh the metadata of Hamiltonians already registered."),
    prune: bool = typer.Option(False, "--prune", help="Remove Hamiltonians no longer in the manifest (catalog only)."),
    batch_size: int = typer.Option(5000, "--batch-size", help="Hamiltonians per request on the bulk path."),
    workers: int = typer.Option(8, "--workers", help="Concurrent requests on the stock path."),
    stock: bool = typer.Option(False, "--stock", help="Use Tiled's stock client API even if the plug-in is there."),
) -> None:
    """Register manifests into a running server: incremental, resumable, thousands of nodes per second.

    With the sweepcat plug-in (present in `sweepcat serve`) Hamiltonians go in
    batches through the same code as `sweepcat ingest`; against a plain Tiled
    server, through Tiled's stock client. The command says which. Interrupted,
    run it again: it skips what is done and finishes the rest.

    Example:  sweepcat register demo/manifests --url http://127.0.0.1:8000 --api-key KEY
    """
    from .client.register import register
    from .contract import read_manifests

    with friendly_errors():
        pairs = _manifest_pairs(manifests, ham_manifest, art_manifest, label,
                                "e.g. sweepcat register demo/manifests --url http://127.0.0.1:8000")
        for ham_path, art_path in pairs:
            m = read_manifests(ham_path, art_path, base_dir=base_dir, label=label)
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
            with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
                task = bar.add_task(f"registering {m.description.key}", total=m.ham.num_rows, rate="")
                t0 = time.perf_counter()
                nodes = [0]

                def advance(hams: int, new_nodes: int, bar: Any = bar, task: Any = task, t0: float = t0,
                            nodes: list[int] = nodes) -> None:
                    nodes[0] += new_nodes
                    bar.update(task, advance=hams, rate=f"{nodes[0] / (time.perf_counter() - t0):,.0f} nodes/s")

                result = register(m, url, api_key, update=update, prune=prune, batch_size=batch_size,
                                  workers=workers, force_stock=stock, progress=advance,
                                  say=lambda msg: out.print(msg, markup=False, highlight=False),
                                  on_retry=lambda n, wait, what: err.print(
                                      f"{url}: {what}; retrying in {wait:.1f} s (attempt {n + 1})",
                                      markup=False, highlight=False))
            out.print(str(result), markup=False, highlight=False)


@app.command("delete")
def delete_cmd(
    dataset: str = typer.Argument(..., help="Dataset key."),
    key: Optional[str] = typer.Argument(None, help="Hamiltonian key (omit to delete the whole dataset)."),
    type_: Optional[str] = typer.Argument(None, metavar="TYPE", help="Artifact type (omit to delete the Hamiltonian)."),
    catalog: Optional[str] = typer.Option(None, "--catalog", "-c", help=CATALOG_HELP),
    url: Optional[str] = typer.Option(None, "--url", help="A running Tiled server instead of --catalog."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SWEEPCAT_API_KEY", help="API key for --url."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be deleted, delete nothing."),
) -> None:
    """Remove a dataset, a Hamiltonian or one artifact from the catalog; HDF5 files are never touched.

    Examples:

      sweepcat delete NiPS3_batched --catalog sweepcat.db --dry-run

      sweepcat delete NiPS3_batched H_NiPS3_random_rank0000_0003 --catalog sweepcat.db --yes
    """
    with friendly_errors():
        if (catalog is None) == (url is None):
            raise SweepcatError("give exactly one of --catalog and --url", "e.g. --catalog sweepcat.db")
        if catalog is not None:
            from .catalog.delete import execute_delete, plan_delete
            from .catalog.schema import parse_catalog

            cat = parse_catalog(catalog)
            plan = plan_delete(cat, dataset, key, type_)
            what = f"{plan.path} ({plan.nodes} node(s)) from {cat.display}"
        else:
            from .client.delete import plan_remote_delete

            remote = plan_remote_delete(url, api_key, dataset, key, type_)
            what = str(remote)
        if dry_run:
            out.print(f"would delete {what}")
            return
        if not yes and not typer.confirm(f"delete {what}?"):
            out.print("nothing deleted")
            raise typer.Exit(code=1)
        if catalog is not None:
            execute_delete(cat, plan)
        else:
            remote.execute()
        out.print(f"deleted {what}")


READABLE_HELP = "Extra directory the server may read (repeatable), e.g. where `sweepcat register` will point."


@app.command("datasets")
def datasets_cmd(
    catalog: Optional[str] = typer.Option(None, "--catalog", "-c", help=CATALOG_HELP + " Default: ./sweepcat.db."),
    url: Optional[str] = typer.Option(None, "--url", help="A running sweepcat server instead of --catalog."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="SWEEPCAT_API_KEY", help="API key for --url."),
) -> None:
    """List the datasets of a catalog or a server: Hamiltonians, artifact types, parameters, data root.

    Examples:

      sweepcat datasets --catalog demo/sweepcat.db

      sweepcat datasets --url http://127.0.0.1:8000 --api-key KEY
    """
    from .client.backends import backend_for

    with friendly_errors():
        if url and catalog:
            raise SweepcatError("--url and --catalog name two places", "pass one of them")
        target = url or catalog or "sweepcat.db"
        if not url:
            from .catalog.schema import ensure_catalog, parse_catalog

            try:
                ensure_catalog(parse_catalog(target), create=False)
            except SweepcatError as exc:
                if catalog:
                    raise
                raise SweepcatError(f"{exc.message} (the default catalog)", "name one: --catalog demo/sweepcat.db, "
                                    "or a server: --url http://127.0.0.1:8000 --api-key KEY") from None
        found = backend_for(target, api_key).datasets()
        if not found:
            out.print(f"no datasets in {target}; add one with `sweepcat ingest MANIFESTS --catalog ...`")
        for d in found:
            arts = ", ".join(f"{t} {tuple(a.get('shape', ()))} {a.get('dtype', '')}" for t, a in d["artifacts"].items())
            out.print(f"{d['key']}: {d['hamiltonians']:,} Hamiltonians", markup=False, highlight=False)
            out.print(f"  artifacts:  {arts or '-'}", markup=False, highlight=False)
            out.print(f"  parameters: {', '.join(d['parameters']) or '-'}", markup=False, highlight=False)
            out.print(f"  root:       {d.get('root') or '-'}", markup=False, highlight=False)


@app.command("reindex")
def reindex_cmd(
    dataset: Optional[str] = typer.Argument(None, help="Dataset key (default: every sweepcat dataset)."),
    catalog: str = typer.Option("sweepcat.db", "--catalog", "-c", help=CATALOG_HELP),
    root: Optional[Path] = typer.Option(None, "--root", help="Record DIR as the dataset's data root (for a dataset "
                                        "registered by `register --stock` or another tool, which sweepcat adopts)."),
) -> None:
    """Rebuild the parameter search index from the Hamiltonians' metadata.

    `ingest`, `register` and `delete` keep it in step, and so do triggers for changes made
    through Tiled's API. Use this to adopt a dataset registered by other tools (then sweepcat
    treats it as its own), or if the index ever drifts.

    Example:  sweepcat reindex NiPS3_batched --catalog sweepcat.db
    """
    from .catalog.params import reindex_catalog
    from .catalog.schema import parse_catalog

    with friendly_errors():
        for done in reindex_catalog(parse_catalog(catalog), dataset, str(root) if root else None):
            out.print(f"{done.key}: indexed {done.hamiltonians} Hamiltonians" + (" (adopted)" if done.adopted else ""))
            for warning in done.warnings:
                out.print(f"  note: {warning}", markup=False, highlight=False)


def _server_config(catalog: str, public: bool, host: str, port: int,
                   readable: list[Path] | None = None, create: bool = True) -> tuple[dict, str, bool]:
    import os

    from .catalog.query import dataset_roots
    from .catalog.schema import ensure_catalog, parse_catalog
    from .server.config import API_KEY_ENV, new_api_key, server_config

    cat = parse_catalog(catalog)
    try:
        ensure_catalog(cat, create=create)
    except SweepcatError as exc:
        if create or "does not exist" not in exc.message and "holds no Tiled catalog" not in exc.message:
            raise
        raise SweepcatError(f"{exc.message}: nothing to serve (a typo in --catalog?)",
                            "check the path, or pass --create to start an empty catalog there") from None
    roots = dataset_roots(cat)
    for extra in readable or []:
        if not extra.is_dir():
            raise SweepcatError(f"--readable {extra}: not a directory", "pass an existing data directory")
        roots.append(str(extra.resolve()))
    key = os.environ.get(API_KEY_ENV) or new_api_key()
    generated = API_KEY_ENV not in os.environ or not os.environ[API_KEY_ENV]
    if not key.isalnum():
        raise SweepcatError(f"{API_KEY_ENV} must be alphanumeric (Tiled's rule)",
                            "e.g. export SWEEPCAT_API_KEY=$(openssl rand -hex 16)")
    return server_config(cat.tiled_uri, roots, api_key=key, public=public, host=host, port=port), key, generated


@app.command("config")
def config_cmd(
    catalog: str = typer.Option("sweepcat.db", "--catalog", "-c", help=CATALOG_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to listen on."),
    public: bool = typer.Option(False, "--public", help="Allow anonymous read access."),
    readable: Optional[list[Path]] = typer.Option(None, "--readable", help=READABLE_HELP),
) -> None:
    """Print the Tiled server config that `sweepcat serve` runs, to run it yourself.

    The API key comes from SWEEPCAT_API_KEY, else a new one is written into the config.
    Run the file with sweepcat's app factory (fast path included), or with `tiled serve config`
    (array reads ~7x slower; Tiled's banner prints a key this server refuses: the key is in the file).

    Examples:

      sweepcat config --catalog sweepcat.db > tiled.yml

      SWEEPCAT_CONFIG=tiled.yml uvicorn --factory sweepcat.server.app:from_config_env --port 8000

      tiled serve config tiled.yml
    """
    from .server.config import config_yaml

    with friendly_errors():
        config, key, _ = _server_config(catalog, public, host, port, readable, create=False)
        sys.stdout.write(config_yaml(config))
        err.print(f"API key: {key} (in the config's authentication.single_user_api_key); run it with\n"
                  "  SWEEPCAT_CONFIG=FILE uvicorn --factory sweepcat.server.app:from_config_env "
                  f"--host {host} --port {port}", markup=False, highlight=False)


@app.command("serve")
def serve_cmd(
    catalog: str = typer.Option("sweepcat.db", "--catalog", "-c", help=CATALOG_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    public: bool = typer.Option(False, "--public", help="Allow anonymous read access (writes still need the key)."),
    readable: Optional[list[Path]] = typer.Option(None, "--readable", help=READABLE_HELP),
    create: bool = typer.Option(False, "--create", help="Create an empty catalog if there is none (otherwise a "
                                "missing catalog is an error: a typo would serve an empty one)."),
    log_level: str = typer.Option("info", "--log-level", help="critical, error, warning, info (one access-log "
                                  "line per request) or debug."),
) -> None:
    """Run the real Tiled server on the catalog, with sweepcat's adapter and one API key.

    The key is SWEEPCAT_API_KEY if set, else generated and printed once.

    Example:  SWEEPCAT_API_KEY=secret sweepcat serve --catalog sweepcat.db --port 8000
    """
    with friendly_errors():
        if log_level not in LOG_LEVELS:
            raise SweepcatError(f"--log-level {log_level!r} is unknown", f"use one of {', '.join(LOG_LEVELS)}")
        config, key, generated = _server_config(catalog, public, host, port, readable, create=create)
        import uvicorn

        from .catalog.schema import parse_catalog
        from .server.app import bind, build_app

        app_ = build_app(config)
        sock = bind(host, port)  # before the banner: a port in use is said instead of a banner
        url = f"http://{host}:{port}"
        roots = config["trees"][0]["args"]["readable_storage"]
        out.print(f"sweepcat serving {parse_catalog(catalog).display} at {url}  (Tiled {_tiled_version()})")
        out.print(f"  API key:  {key}" + ("   (generated; set SWEEPCAT_API_KEY to choose one)" if generated else ""))
        out.print(f"  web UI:   {url}/ui/?api_key={key}")
        out.print(f"  explorer: {url}/sweepcat/" + ("" if public else "   (asks for the key once per browser tab)"))
        out.print(f"  readable: {', '.join(roots) or '(no datasets yet)'}")
        out.print("  anonymous read access: " + ("on (--public)" if public else "off"))
        out.print(_snippet(url, key, catalog), markup=False, highlight=False)
        sys.stdout.flush()
        server = uvicorn.Server(uvicorn.Config(app_, host=host, port=port, log_level=log_level,
                                               access_log=log_level in ("info", "debug")))
        server.run(sockets=[sock])


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _tiled_version() -> str:
    import tiled

    return tiled.__version__


def _snippet(url: str, key: str, catalog: str) -> str:
    try:
        from .catalog.query import list_datasets
        from .catalog.schema import parse_catalog

        datasets = list_datasets(parse_catalog(catalog))
    except SweepcatError:
        datasets = []
    ds = datasets[0].key if datasets else "DATASET"
    return (
        "\nRead one Hamiltonian's RIXS map and XPS spectrum:\n\n"
        "    from tiled.client import from_uri\n"
        f"    c = from_uri(\"{url}\", api_key=\"{key}\")\n"
        f"    h = c[\"{ds}\"].values().first()\n"
        "    rixs = h[\"rixs\"].read()   # (151, 40), only this row is read on the server\n"
        "    xps = h[\"xps\"][100:200]     # server-side slicing\n"
    )


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
