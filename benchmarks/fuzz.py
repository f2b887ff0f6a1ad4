"""Long fuzzing run of the manifest reader, the tar reader and the prompt builder (docs/errors.md).

Runs every property of ``tests/test_fuzz.py`` with 10,000 random (not derandomized) cases each,
then, when ``atheris`` is importable, the byte-level targets (manifest bytes, tar bytes, prompt
text) under libFuzzer's coverage-guided mutation for ``--atheris-runs`` inputs each, every target
in its own process (libFuzzer exits the process when it is done). Prints one line per target and
exits non-zero if any invariant broke.

    python benchmarks/fuzz.py                      # 10k cases per property (+ atheris if installed)
    python benchmarks/fuzz.py --examples 500 --only prompt
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_properties(examples: int) -> ModuleType:
    """Import tests/test_fuzz.py with ``examples`` cases per property, random seeds."""
    os.environ["SPEECHDATA_FUZZ_EXAMPLES"] = str(examples)
    os.environ["SPEECHDATA_FUZZ_RANDOM"] = "1"
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(
        "speechdata_fuzz_properties", ROOT / "tests" / "test_fuzz.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_hypothesis(examples: int, only: str | None) -> bool:
    props = load_properties(examples)
    ok = True
    for name in sorted(n for n in dir(props) if n.startswith("test_")):
        if only and only not in name:
            continue
        start = time.perf_counter()
        try:
            getattr(props, name)()
            status = "ok"
        except Exception as e:  # report every failing property, then exit non-zero
            ok = False
            status = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(
            f"hypothesis {name}: {examples} cases, {time.perf_counter() - start:.1f} s, {status}", flush=True
        )
    return ok


# ------------------------------------------------------------------------------------ atheris

ATHERIS_TARGETS = ("manifest", "tar", "prompt")


def atheris_child(target: str, runs: int) -> None:
    """Run one target under atheris (in this process; libFuzzer exits it at the end)."""
    import atheris

    with atheris.instrument_imports():
        props = load_properties(1)
    if target == "manifest":

        def one(data: bytes) -> None:
            props.check_manifest_bytes(data)

    elif target == "tar":
        seed = props.valid_tar()[0]

        def one(data: bytes) -> None:
            # half the inputs mutate a valid tar, so the fuzzer starts past tarfile's magic checks
            raw = (
                props.corrupt(seed, [(i * 97, b) for i, b in enumerate(data[1:16])], None)
                if data[:1] == b"\x01"
                else data
            )
            props.check_tar_bytes(raw)

    else:
        configs = sorted(props._CONFIGS)

        def one(data: bytes) -> None:
            fdp = atheris.FuzzedDataProvider(data)
            name = configs[fdp.ConsumeIntInRange(0, len(configs) - 1)]
            n = fdp.ConsumeIntInRange(0, 3)
            context = fdp.ConsumeUnicode(40) if fdp.ConsumeBool() else None
            props.check_prompt(name, context, fdp.ConsumeUnicode(60), n)

    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=4096"], one)
    atheris.Fuzz()


def run_atheris(runs: int, only: str | None) -> bool | None:
    """Each target in a child process; None when atheris is not installed."""
    if importlib.util.find_spec("atheris") is None:
        print("atheris: not importable in this environment, skipped")
        return None
    ok = True
    for target in ATHERIS_TARGETS:
        if only and only not in target:
            continue
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--atheris-child", target, "--atheris-runs", str(runs)],
            capture_output=True,
            text=True,
        )
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        if proc.returncode != 0:
            ok = False
            print(proc.stderr[-3000:], file=sys.stderr)
        done = [line for line in proc.stderr.splitlines() if line.startswith("Done ")]
        detail = done[-1] if done else f"{runs} runs"
        print(f"atheris {target}: {detail}, {time.perf_counter() - start:.1f} s, {status}", flush=True)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--examples", type=int, default=10_000, help="hypothesis cases per property (default 10000)"
    )
    p.add_argument(
        "--atheris-runs", type=int, default=10_000, help="atheris inputs per target (default 10000)"
    )
    p.add_argument("--only", help="run only properties / targets whose name contains this")
    p.add_argument("--no-atheris", action="store_true", help="skip atheris even when installed")
    p.add_argument("--atheris-child", choices=ATHERIS_TARGETS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.atheris_child:
        atheris_child(args.atheris_child, args.atheris_runs)
        return 0
    ok = run_hypothesis(args.examples, args.only)
    if not args.no_atheris:
        ok = (run_atheris(args.atheris_runs, args.only) is not False) and ok
    print("fuzz: all invariants held" if ok else "fuzz: FAILURES (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
