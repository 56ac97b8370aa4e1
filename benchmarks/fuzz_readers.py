"""Coverage-guided fuzzing of every reader of untrusted bytes: the manifest formats and the photo
decoder, for a fixed time each.

Each reader runs in its own process under atheris (libFuzzer), seeded from the committed corpus
``benchmarks/fuzz_corpus/<reader>/`` (new inputs it finds go to a scratch folder, never there).
The invariant is the property tests' (``tests/support/reader_invariants.py``): a manifest is
either the file's ``ManifestError`` naming it, or every row comes out exactly once as ``ok`` or
``rejected`` with a row number and a reason, every asset key stays under ``assets/``, and every
output column converts to Arrow. A photo decodes to an 8-bit RGB(A) array or raises
``PhotoError``. Anything else is a crash: its input and traceback are saved under ``--out``,
and fuzzing goes on. Per reader it prints executions, final coverage (libFuzzer's ``cov:``),
executions per second and crashes.

    python benchmarks/fuzz_readers.py --seconds 600 [--reader csv|...|all] [--jobs 2]
    python benchmarks/fuzz_readers.py --make-corpus     # rewrite the seed corpus

Without atheris installed (``pip install -e '.[fuzz]'``) a reader runs a plain random-mutation
loop over the same corpus and invariant instead (no coverage figure).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import io
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
#: reader name -> (manifest format, file suffix); "photo" is the photo decoder.
READERS = {
    "csv": ("csv", ".csv"),
    "jsonl": ("jsonl", ".jsonl"),
    "jsonl.gz": ("jsonl", ".jsonl.gz"),
    "parquet": ("parquet", ".parquet"),
    "shopify": ("shopify", ".csv"),
    "merchant-tsv": ("merchant-tsv", ".tsv"),
    "merchant-xml": ("merchant-xml", ".xml"),
    "photo": ("", ""),
}
MAX_LEN = 65_536
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+).*?exec/s: (\d+)")


# --- what one input becomes (the child process) ------------------------------------------

def to_file_bytes(reader: str, data: bytes) -> bytes:
    """The file a fuzz input stands for. ``jsonl.gz``: the first byte's low bit picks the
    input gzipped (content fuzzing) or taken as the ``.gz`` bytes themselves (a corrupt
    stream). ``parquet``: the same bit picks a table built from the input's lines (sku, title,
    a binary column that may hold bad UTF-8, a seed) or the input as the file's bytes."""
    if reader == "jsonl.gz":
        mode, payload = (data[0] if data else 0), data[1:]
        return gzip.compress(payload, mtime=0) if mode & 1 else payload
    if reader == "parquet":
        mode, payload = (data[0] if data else 0), data[1:]
        return _parquet_table(payload) if mode & 1 else payload
    return data


def _parquet_table(payload: bytes) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = payload.split(b"\n")
    cells = [line.split(b"\t") + [b"", b"", b""] for line in lines]
    table = pa.table({
        "sku": [c[0].decode("utf-8", "replace") for c in cells],
        "title": [c[1].decode("utf-8", "replace") or None for c in cells],
        "blob": pa.array([c[2] for c in cells], pa.binary()),
        "seed": [len(c[0]) - 3 for c in cells],
    })
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=max(1, len(lines) // 2))
    return sink.getvalue()


class Checker:
    """The invariant for one reader, over inputs written to one scratch file."""

    def __init__(self, reader: str, out: Path) -> None:
        from factory.catalog.records import ManifestError
        from factory.core.photo_decode import PhotoError
        from tests.support.reader_invariants import account

        self.reader, self.out = reader, out
        self.fmt, suffix = READERS[reader]
        self.account, self.errors = account, (ManifestError, PhotoError)
        self.path = Path(tempfile.mkdtemp(prefix=f"fuzz-{reader}-")) / f"input{suffix}"
        self.crashes: dict[str, int] = {}

    def __call__(self, data: bytes) -> None:
        try:
            self.check(data)
        except Exception as exc:  # everything but the expected errors is a crash, recorded
            self.record(data, exc)

    def check(self, data: bytes) -> None:
        if self.reader == "photo":
            self._photo(data)
            return
        self.path.write_bytes(to_file_bytes(self.reader, data))
        self.account(self.path, self.fmt)

    def _photo(self, data: bytes) -> None:
        from factory.core.photo_decode import PhotoError, decode_photo, probe_photo

        try:
            probe_photo(data, max_pixels=4_000_000)
            array = decode_photo(data, max_pixels=4_000_000)
        except PhotoError:
            return
        if array.dtype.name != "uint8" or array.ndim != 3 or array.shape[2] not in (3, 4):
            raise AssertionError(f"decoded to {array.dtype} {array.shape}")

    def record(self, data: bytes, exc: Exception) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        signature = f"{type(exc).__name__} at {where}"
        self.crashes[signature] = self.crashes.get(signature, 0) + 1
        if self.crashes[signature] > 1:
            return
        name = hashlib.sha1(data).hexdigest()[:16]
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"crash-{name}").write_bytes(data)
        (self.out / f"crash-{name}.txt").write_text(
            signature + "\n\n" + "".join(traceback.format_exception(exc)), errors="replace")
        print(f"CRASH {signature} -> {self.out / f'crash-{name}'}", flush=True)


def child(reader: str, seconds: int, out: Path) -> None:
    """Fuzz one reader for ``seconds`` (in this process); print libFuzzer's figures."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    scratch = Path(tempfile.mkdtemp(prefix=f"fuzz-corpus-{reader}-"))
    out.mkdir(parents=True, exist_ok=True)
    seeds = CORPUS / reader
    try:
        import atheris
    except ImportError:
        checker = Checker(reader, out)
        _mutation_loop(checker, seeds, seconds)
        return
    with atheris.instrument_imports(include=["factory", "tests.support", "html", "_markupbase",
                                             "json", "csv", "gzip", "defusedxml", "xml",
                                             "PIL"]):
        for module in ("factory.catalog.manifest", "factory.core.photo_decode",
                       "factory.run.rows", "tests.support.reader_invariants"):
            importlib.import_module(module)
    checker = Checker(reader, out)
    print(f"fuzzing {reader} for {seconds} s, seeds from {seeds}", flush=True)
    atheris.Setup([sys.argv[0], str(scratch), str(seeds), f"-max_total_time={seconds}",
                   f"-max_len={MAX_LEN}", "-timeout=30", "-rss_limit_mb=3072",
                   "-print_final_stats=1", f"-artifact_prefix={out}/"], checker)
    atheris.Fuzz()


def _mutation_loop(checker: Checker, seeds: Path, seconds: int) -> None:
    """Without atheris: random byte mutations of the seeds, for ``seconds``."""
    rng = random.Random(0)
    corpus = [p.read_bytes() for p in sorted(seeds.iterdir())] or [b""]
    deadline, runs = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        data = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(4)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif op == 2:
                del data[at:at + rng.randint(1, 16)]
            else:
                other = rng.choice(corpus)
                start = rng.randrange(len(other) + 1)
                data[at:at] = other[start:start + rng.randint(1, 64)]
        checker(bytes(data[:MAX_LEN]))
        runs += 1
    print(f"Done {runs} runs in {seconds} second(s) (random mutation, no coverage)", flush=True)


# --- the driver ----------------------------------------------------------------------------

def parse(output: str) -> dict[str, object]:
    """Executions, final coverage and features, exec/s and crashes from a child's output."""
    runs = cov = ft = rate = 0
    for line in output.splitlines():
        if match := _STATUS.match(line):
            runs, cov, ft, rate = (int(g) for g in match.groups())
        elif match := re.match(r"^Done (\d+) runs in (\d+) second", line):
            runs = int(match.group(1))
        elif match := re.match(r"^stat::number_of_executed_units: (\d+)", line):
            runs = int(match.group(1))
    crashes = sorted({line.split(" -> ")[0][6:] for line in output.splitlines()
                      if line.startswith("CRASH ")})
    fatal = [line for line in output.splitlines()
             if line.startswith(("==", "ERROR: libFuzzer", "=== Uncaught"))]
    return {"runs": runs, "cov": cov, "ft": ft, "exec_s": rate, "crashes": crashes,
            "fatal": fatal}


def drive(readers: list[str], seconds: int, jobs: int, out: Path) -> int:
    """Fuzz ``readers``, ``jobs`` at a time, each in a child process; print a table."""
    pending, running, results = list(readers), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            reader = pending.pop(0)
            log = out / f"{reader}.log"
            out.mkdir(parents=True, exist_ok=True)
            handle = open(log, "w")
            process = subprocess.Popen(
                [sys.executable, __file__, "--child", reader, "--seconds", str(seconds),
                 "--out", str(out / reader)], cwd=ROOT, stdout=handle,
                stderr=subprocess.STDOUT)
            running[reader] = (process, handle, log, time.monotonic())
        time.sleep(1)
        for reader, (process, handle, log, started) in list(running.items()):
            if process.poll() is None:
                continue
            handle.close()
            results[reader] = parse(log.read_text(errors="replace"))
            results[reader]["seconds"] = round(time.monotonic() - started)
            results[reader]["rc"] = process.returncode
            del running[reader]
            _print_row(reader, results[reader])
    total = sum(len(r["crashes"]) + len(r["fatal"]) for r in results.values())
    print(f"\n{'reader':14} {'seconds':>7} {'runs':>10} {'exec/s':>7} {'cov':>6} {'ft':>7} "
          "crashes")
    for reader in readers:
        r = results[reader]
        print(f"{reader:14} {r['seconds']:>7} {r['runs']:>10} {r['exec_s']:>7} {r['cov']:>6} "
              f"{r['ft']:>7} {len(r['crashes']) + len(r['fatal'])}")
    print(f"logs and crash inputs: {out}")
    return 1 if total else 0


def _print_row(reader: str, r: dict[str, object]) -> None:
    print(f"{reader}: {r['runs']} runs in {r['seconds']} s, cov {r['cov']}, ft {r['ft']}, "
          f"{r['exec_s']} exec/s, rc {r['rc']}", flush=True)
    for crash in [*r["crashes"], *r["fatal"]]:
        print(f"  crash: {crash}", flush=True)


def seeds() -> dict[str, dict[str, bytes]]:
    """Small valid files and edge cases, per reader, in the harness's input format."""

    csv_ok = (b"sku,title,color,seed,width,height,palette,variant\n"
              b"A1,mug,red,7,512,512,#ff0000,hero\n"
              b'A2,"tee, ""soft""\nnew line",blue,,,,,\n'
              b"A2,tee,blue,,,,,\n../x,bad,,abc,-8,7,#GGG,\n\n")
    jsonl_ok = (b'{"sku": "J1", "title": "mug", "seed": 5}\n\n'
                b'{"sku": "J2", "title": "caf\\u00e9", "tags": ["a", "b"], "n": {"x": 1}}\n'
                b'[1, 2]\n{not json\n{"sku": "J3", "seed": "\\ud800"}\n'
                b'{"sku": "J4", "seed": 1' + b"0" * 64 + b"}\n")
    shopify_legacy = (
        b"Handle,Title,Body (HTML),Vendor,Type,Tags,Status,Option1 Name,Option1 Value,"
        b"Option2 Name,Option2 Value,Variant SKU,Image Src,Variant Image\n"
        b"tee,Tee,<p>Soft <b>cotton</b></p>,Acme,Shirt,\"a, b\",active,Color,Red,Size,M,"
        b"TEE-R-M,http://x/a.png,\n"
        b"tee,,,,,,,,Blue,,L,TEE-B-L,,http://x/b.png\n"
        b"tee,,,,,,,,,,,,http://x/c.png,\n"
        b"mug,Mug,<![CDATA[x]]>,,,,draft,Title,Default Title,,,,,\n")
    shopify_current = (
        b"Title,URL handle,Description,Vendor,Product category,Type,Tags,SKU,Status,"
        b"Option1 name,Option1 value,Product image URL,Variant image URL\n"
        b"Cap,cap,<ul><li>wool</li></ul>,Acme,Hats,Cap,,CAP-1,active,Colour,Green,,\n"
        b",cap,,,,,,,,,Navy,,\n")
    merchant_tsv = (b"id\ttitle\tdescription\tbrand\tcolor\tsize\titem_group_id\t"
                    b"image_link\n"
                    b"M1\tMug\t<b>Big</b>\tAcme\tred\tL\tG1\thttp://x/m.png\n"
                    b"\tNo id\t\t\t\t\t\t\n")
    merchant_xml = (b'<?xml version="1.0"?>\n<rss version="2.0" '
                    b'xmlns:g="http://base.google.com/ns/1.0"><channel><title>s</title>'
                    b"<item><g:id>X1</g:id><title>Mug &amp; cup</title>"
                    b"<description>&lt;p&gt;big&lt;/p&gt;</description><g:color>red</g:color>"
                    b"</item><item><title>no id</title></item></channel></rss>\n")
    table_lines = b"P1\tmug\tok\nP2\t\t\xff\xfe bad utf-8\n\tno sku\t\n"
    return {
        "csv": {"ok.csv": csv_ok, "bom.csv": b"\xef\xbb\xbfsku,title\r\nB1,x\r\n",
                "bad-utf8.csv": b"sku,title\nC1,\xff\xfe\nC2,fine\n",
                "cr.csv": b"sku,title\rR1,a\rR2,b\r",
                "ragged.csv": b"sku,title\nC1\nC2,a,b\n\"C3,x\n"},
        "jsonl": {"ok.jsonl": jsonl_ok, "deep.jsonl": b'{"sku": "D", "n": ' + b"[" * 40
                  + b"]" * 40 + b"}\n"},
        "jsonl.gz": {"gz-content": b"\x01" + jsonl_ok,
                     "gz-raw": b"\x00" + gzip.compress(jsonl_ok, mtime=0)},
        "parquet": {"table": b"\x01" + table_lines,
                    "raw": b"\x00" + _parquet_table(table_lines)},
        "shopify": {"legacy.csv": shopify_legacy, "current.csv": shopify_current},
        "merchant-tsv": {"feed.tsv": merchant_tsv},
        "merchant-xml": {"feed.xml": merchant_xml},
        "photo": _photo_seeds(),
    }


def _photo_seeds() -> dict[str, bytes]:
    from PIL import Image

    out = {}
    for mode, fmt in (("RGB", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("L", "JPEG"),
                      ("CMYK", "JPEG"), ("I;16", "PNG"), ("RGB", "WEBP"), ("RGB", "TIFF"),
                      ("LA", "PNG"), ("1", "BMP")):
        image = Image.new(mode, (5, 3))
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        out[f"{mode.replace(';', '')}.{fmt.lower()}"] = buffer.getvalue()
    return out


def make_corpus() -> None:
    """Write the seed corpus: small valid files and edge cases per reader."""
    sys.path.insert(0, str(ROOT))
    for reader, files in seeds().items():
        folder = CORPUS / reader
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        print(f"{reader}: {len(files)} seeds, {sum(map(len, files.values()))} bytes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="per reader")
    parser.add_argument("--reader", default="all", choices=[*READERS, "all"])
    parser.add_argument("--jobs", type=int, default=1, help="readers fuzzed at once")
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "fuzz_readers")
    parser.add_argument("--child", choices=list(READERS), help=argparse.SUPPRESS)
    parser.add_argument("--make-corpus", action="store_true")
    args = parser.parse_args()
    if args.make_corpus:
        make_corpus()
        return 0
    if args.child:
        child(args.child, args.seconds, args.out)
        return 0
    readers = list(READERS) if args.reader == "all" else [args.reader]
    return drive(readers, args.seconds, args.jobs, args.out)


if __name__ == "__main__":
    sys.exit(main())
