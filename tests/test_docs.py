"""Every ```python block in docs/*.md runs, and does what the page says.

How a block runs is set by an HTML comment on the line right before its fence:

* no comment, or ``<!-- run -->``: a standalone program (it calls ``fed.init`` itself,
  normally with ``mode="simulation"``);
* ``<!-- run: parties=alice,bob -->``: a driver script taking its party as
  ``sys.argv[1]``, run as ``fed run --simulate`` runs it (``RAYFED_MODE=simulation``,
  ``RAYFED_ADDRESSES``, the first party as argument);
* ``<!-- fed-run: parties=alice,bob -->``: the real launcher, ``fed run`` (one
  process per party) and ``fed run --simulate``; flags: ``simulate-only``, ``tls``,
  ``fails`` (production only, must exit non-zero);
* ``<!-- not-run -->`` or ``<!-- not-run: why -->``: a fragment, skipped (keep these few).

Options (``;``-separated): ``expect=TEXT`` (the output, or the error, contains TEXT) and
``raises=ErrorName`` (the block must raise it). The ``run`` blocks share one process
and one Ray cluster (started once, as in a notebook), each in its own namespace; the
``fed-run`` blocks start real processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = ["getting-started", "concepts", "api", "simulation", "deployment",
         "troubleshooting", "migrating-from-rayfed", "security", "reliability", "protocol",
         "architecture", "benchmarks", "sites", "codec-library-tags", "kubernetes", "observability", "interconnect"]

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*(not-run|run|fed-run)\s*(?::\s*(.*?))?\s*-->\s*$")


@dataclasses.dataclass
class Block:
    page: str
    line: int
    code: str
    kind: str  # "run", "fed-run" or "not-run"
    options: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def parse_options(text: str | None) -> dict[str, str]:
    options: dict[str, str] = {}
    for part in (text or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            options[key.strip()] = value.strip()
    return options


def collect(path: Path) -> list[Block]:
    """The python blocks of one page, with the marker on the line before each fence."""
    text = path.read_text()
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.search(before)
        kind, options = ("run", {}) if marker is None else (marker[1], parse_options(marker[2]))
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(path.stem, line, match[1], kind, options))
    return blocks


ALL_BLOCKS = [b for page in PAGES if (DOCS / f"{page}.md").exists()
              for b in collect(DOCS / f"{page}.md")]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.kind == "run"]
FED_RUN_BLOCKS = [b for b in ALL_BLOCKS if b.kind == "fed-run"]


def test_pages_exist_and_most_blocks_run() -> None:
    missing = [p for p in PAGES if not (DOCS / f"{p}.md").exists()]
    assert not missing, f"missing docs pages: {missing}"
    skipped = [b.id for b in ALL_BLOCKS if b.kind == "not-run"]
    assert len(skipped) <= 6, f"too many not-run blocks: {skipped}"
    assert len(RUN_BLOCKS) + len(FED_RUN_BLOCKS) >= 15


def test_every_page_is_checked() -> None:
    """A new page is in PAGES: its links are checked and its blocks run (or say why not)."""
    assert {p.stem for p in DOCS.glob("*.md")} == set(PAGES)


def test_api_reference_is_complete() -> None:
    """Every public name, fed.init argument and configuration key appears in api.md."""
    import fed
    from fed import config

    text = (DOCS / "api.md").read_text()
    names = list(fed.__all__) + list(inspect.signature(fed.init).parameters)
    names += [f.name for f in dataclasses.fields(config.CrossSiloCommConfig)]
    names += list(config.TOP_LEVEL_KEYS)
    for cls_name in ("EgressConfig", "TlsConfig"):  # nested sections, when present
        cls = getattr(config, cls_name, None)
        if cls is not None:
            names += [f.name for f in dataclasses.fields(cls)]
    absent = [n for n in names if f"`{n}`" not in text]
    assert not absent, f"docs/api.md does not document {absent}"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    heads = re.findall(r"^#+\s+(.*?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page: str) -> None:
    """Relative links of our pages point at existing files and headings."""
    path = DOCS / f"{page}.md"
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"broken links in docs/{page}.md: {broken}"


# ---- run blocks: one process, one Ray cluster ---------------------------------------------


def run_blocks(spec_path: str, out_path: str) -> None:
    """Child process: run every block of `spec_path`, write one result per block."""
    import ray

    import fed

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    results = {}
    for spec in json.loads(Path(spec_path).read_text()):
        results[spec["id"]] = _run_one(spec, fed)
        Path(out_path).write_text(json.dumps(results))  # a crash keeps what finished
    ray.shutdown()


def _run_one(spec: dict[str, Any], fed: Any) -> dict[str, Any]:
    options = spec["options"]
    parties = [p for p in options.get("parties", "").split(",") if p]
    saved_env, saved_argv = dict(os.environ), list(sys.argv)
    # A real file, so tracebacks (in Ray workers too) show the block's source lines.
    path = os.path.abspath(re.sub(r"\W", "_", spec["id"]) + ".py")
    Path(path).write_text(spec["code"])
    if parties:  # what `fed run --simulate` sets up
        os.environ.update(
            RAYFED_MODE="simulation", RAYFED_PARTY=parties[0],
            RAYFED_ADDRESSES=json.dumps({p: f"127.0.0.1:{22000 + i}"
                                         for i, p in enumerate(parties)}),
        )
        sys.argv = [path, parties[0]]
    out = io.StringIO()
    result: dict[str, Any] = {"error": None, "error_types": [], "output": ""}
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(spec["code"], path, "exec"), {"__name__": "__main__"})
    except BaseException as exc:  # noqa: BLE001 - report everything, SystemExit included
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["error_types"] = [c.__name__ for c in type(exc).__mro__]
        result["traceback"] = "".join(traceback.format_exception(exc))
    finally:
        fed.shutdown()  # a block that failed half-way must not leak into the next
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    result["output"] = out.getvalue()
    return result


@pytest.fixture(scope="module")
def run_results(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("docs")
    spec, out = tmp / "blocks.json", tmp / "results.json"
    spec.write_text(json.dumps([
        {"id": b.id, "code": b.code, "options": b.options} for b in RUN_BLOCKS
    ]))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("RAYFED_MODE", "RAYFED_TLS_DIR", "RAYFED_ADDRESSES", "RAYFED_PARTY"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, __file__, str(spec), str(out)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=400,
    )
    results = json.loads(out.read_text()) if out.exists() else {}
    results["__process__"] = proc.stdout[-3000:] + proc.stderr[-3000:]
    return results


@pytest.mark.timeout(420)
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.id)
def test_run_block(block: Block, run_results: dict[str, Any]) -> None:
    result = run_results.get(block.id)
    assert result is not None, f"the block runner stopped early:\n{run_results['__process__']}"
    expected_error = block.options.get("raises")
    if expected_error:
        assert expected_error in result["error_types"], (
            f"{block.id} should raise {expected_error}, got {result['error']}\n{result['output']}"
        )
        seen = result["error"]
    else:
        assert result["error"] is None, f"{block.id} failed:\n{result.get('traceback')}"
        seen = result["output"]
    expect = block.options.get("expect")
    if expect:
        assert expect in seen, f"{block.id}: {expect!r} not in:\n{seen}"


# ---- fed-run blocks: the real launcher ------------------------------------------------------


def fed_run(script: Path, parties: str, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for var in ("RAYFED_MODE", "RAYFED_TLS_DIR", "RAYFED_ADDRESSES", "RAYFED_PARTY"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "fed.cli.main", "run", str(script), "--parties", parties,
         "--timeout", "150", *flags],
        cwd=script.parent, env=env, capture_output=True, text=True, timeout=200,
    )


@pytest.mark.timeout(400)
@pytest.mark.parametrize("block", FED_RUN_BLOCKS, ids=lambda b: b.id)
def test_fed_run_block(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(block.code)
    opts = block.options
    flags = ["--tls"] if "tls" in opts else []
    modes = [[]] if "fails" in opts else [["--simulate"]] if "simulate-only" in opts \
        else [[], ["--simulate"]]
    for mode in modes:
        proc = fed_run(script, opts["parties"], *flags, *mode)
        shown = f"fed run {' '.join(flags + mode)}: exit {proc.returncode}\n" \
                f"{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        if "fails" in opts:
            assert proc.returncode != 0, shown
        else:
            assert proc.returncode == 0, shown
        if opts.get("expect"):
            assert opts["expect"] in proc.stdout + proc.stderr, shown


if __name__ == "__main__":
    run_blocks(sys.argv[1], sys.argv[2])
