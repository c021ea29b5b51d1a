"""Dataset manifests: the official annotation files of each dataset, fetched, checked, converted.

``DATASETS`` says where each publisher keeps its files and how many rows each must have.
``fetch_official`` downloads them (or takes a hand-downloaded archive or folder: ``source``) into
``<manifests folder>/<dataset>/``, checks the row counts, and records sha256 sums in
``SHA256SUMS`` there so a later fetch notices a changed file.

The manifests folder (``DATA_MANIFESTS``, see ``default_manifest_dir``) is never inside
site-packages: ``$FLOWPREP_DATA/manifests`` when that is set; else, in a source checkout (a
clone, editable install), the clone's ``data_manifests/`` as before, where its README and the
committed SHA256SUMS live; else the user data folder ``$XDG_DATA_HOME/flowprep/manifests``
(``~/.local/share/flowprep/manifests``).  Recipes name files there as ``data:<dataset>/<file>``.

Kinetics CSVs are already flowprep manifests (``manifest.parse_manifest`` reads them as they
are).  UCF-101 and HMDB-51 publish split lists of file names; ``ucf101_entries`` /
``hmdb51_entries`` read them, and ``write_local_manifest`` turns them plus the folder where the
videos were unpacked into a ``path,label,split`` manifest.

This module may touch: the network (publishers' URLs, only from ``fetch_official``), the
manifests folder, the archive tools ``bsdtar`` / ``unrar`` / ``7z`` for HMDB-51's .rar.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flowprep.atomic import write_text
from flowprep.dataset.manifest import VIDEO_ID, ManifestError


def default_manifest_dir(environ: Mapping[str, str] = os.environ, package_dir: Path | None = None) -> Path:
    """Where fetched annotation files and built manifests go (see the module docstring).

    ``$FLOWPREP_DATA/manifests``; else ``<clone>/data_manifests`` when flowprep runs from a source
    checkout (its parent folder has setup.cfg and data_manifests/: clone users keep the folder the
    Makefile, README and committed SHA256SUMS refer to); else the XDG user data folder
    (platformdirs' ``user_data_dir`` rule on Linux), never site-packages.
    """
    if environ.get("FLOWPREP_DATA"):
        return Path(environ["FLOWPREP_DATA"]).expanduser() / "manifests"
    clone = (package_dir or Path(__file__).resolve().parents[1]).parent
    if (clone / "setup.cfg").is_file() and (clone / "data_manifests").is_dir():
        return clone / "data_manifests"
    xdg = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".local" / "share")
    return Path(xdg).expanduser() / "flowprep" / "manifests"


DATA_MANIFESTS = default_manifest_dir()


class FetchManifestError(RuntimeError):
    """Official files could not be fetched or failed their checks; the message says what to do."""


# --- parsers ------------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    """Non-blank lines without their line ending (CRLF or LF) or surrounding spaces."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"{path} not found") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def csv_rows(path: Path) -> int:
    """Data rows of a CSV with a header (quoted fields may hold commas)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return sum(1 for rec in csv.reader(f) if any(c.strip() for c in rec)) - 1


def ucf101_classes(path: Path) -> dict[int, str]:
    """classInd.txt: ``1 ApplyEyeMakeup`` per line -> {1: "ApplyEyeMakeup", ...}."""
    classes: dict[int, str] = {}
    for n, ln in enumerate(_lines(path), 1):
        m = re.fullmatch(r"(\d+)\s+(\S+)", ln)
        if not m:
            raise ManifestError(f"{path}:{n}: expected '<index> <ClassName>', got {ln[:60]!r}")
        classes[int(m.group(1))] = m.group(2)
    return classes


@dataclass(frozen=True)
class Entry:
    """One video of a split list: its path relative to the dataset root, label and split."""

    rel_path: str
    label: str
    split: str


def _safe_rel(rel: str, where: str) -> str:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or re.search(r"[\x00-\x1f\x7f\\]", rel):
        raise ManifestError(f"{where}: unsafe path {rel[:60]!r}")
    return rel


def ucf101_entries(splits_dir: Path, split: int = 1) -> list[Entry]:
    """UCF-101 split ``split`` (1-3): trainlist0N.txt (``Class/v_x.avi 1``) and testlist0N.txt (no class)."""
    if split not in (1, 2, 3):
        raise ValueError(f"UCF-101 split {split!r}: allowed 1, 2, 3")
    classes = ucf101_classes(splits_dir / "classInd.txt")
    names = set(classes.values())
    out: list[Entry] = []
    for kind, fname in (("train", f"trainlist0{split}.txt"), ("test", f"testlist0{split}.txt")):
        path = splits_dir / fname
        for n, ln in enumerate(_lines(path), 1):
            where = f"{path}:{n}"
            rel, _, idx = ln.partition(" ")
            rel = _safe_rel(rel, where)
            folder = rel.split("/")[0]
            if idx.strip():
                if not idx.strip().isdigit() or int(idx) not in classes:
                    raise ManifestError(f"{where}: class index {idx.strip()!r} not in classInd.txt")
                label = classes[int(idx)]
                if label != folder:
                    raise ManifestError(f"{where}: class {label!r} (index {idx.strip()}) but folder {folder!r}")
            elif folder in names:
                label = folder
            else:
                raise ManifestError(f"{where}: folder {folder!r} is not a class of classInd.txt")
            out.append(Entry(rel, label, kind))
    return out


HMDB_CODES = {"1": "train", "2": "test", "0": "unused"}


def hmdb51_entries(splits_dir: Path, split: int = 1) -> list[Entry]:
    """HMDB-51 split ``split`` (1-3) from ``{class}_test_split{N}.txt``: ``name.avi 1`` (1 train, 2 test, 0 unused).

    The videos unpack to ``{class}/{name}.avi``.
    """
    if split not in (1, 2, 3):
        raise ValueError(f"HMDB-51 split {split!r}: allowed 1, 2, 3")
    files = sorted(splits_dir.glob(f"*_test_split{split}.txt"))
    if not files:
        raise ManifestError(f"no *_test_split{split}.txt files in {splits_dir}")
    out: list[Entry] = []
    for path in files:
        label = path.name[: -len(f"_test_split{split}.txt")]
        for n, ln in enumerate(_lines(path), 1):
            m = re.fullmatch(r"(\S.*?)\s+([012])", ln)
            if not m:
                raise ManifestError(f"{path}:{n}: expected '<name>.avi <0|1|2>', got {ln[:60]!r}")
            out.append(Entry(_safe_rel(f"{label}/{m.group(1)}", f"{path}:{n}"), label, HMDB_CODES[m.group(2)]))
    return out


def video_id_for(rel_path: str) -> str:
    """A store-safe video id from a file name: the stem, odd characters replaced, a hash if any were."""
    stem = Path(rel_path).stem
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-")[:100].replace("..", "_")
    if safe != stem:  # keep ids unique when different names map to the same safe text
        safe = f"{safe or 'v'}-{hashlib.sha1(stem.encode()).hexdigest()[:8]}"
    assert VIDEO_ID.fullmatch(safe), safe
    return safe


def write_local_manifest(
    entries: list[Entry], root: Path, out: Path, splits: tuple[str, ...] = ("train", "test")
) -> tuple[int, int]:
    """Write ``id,path,label,split`` for ``entries`` found under ``root``; returns (rows, missing files)."""
    root = root.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "path", "label", "split"])
    rows = missing = 0
    for e in entries:
        if e.split not in splits:
            continue
        path = root / e.rel_path
        missing += not path.is_file()
        w.writerow([video_id_for(e.rel_path), str(path), e.label, e.split])
        rows += 1
    write_text(out, buf.getvalue())
    return rows, missing


# --- official files -----------------------------------------------------------------------


@dataclass(frozen=True)
class OfficialFile:
    name: str  # name under <manifests folder>/<dataset>/
    rows: int | None  # expected data rows (None: not known here; recorded on first fetch)
    aliases: tuple[str, ...] = ()  # other names of the same file (ActivityNet's, CVDF's copies)


@dataclass(frozen=True)
class Dataset:
    name: str
    url: str
    files: tuple[OfficialFile, ...]
    count: Callable[[Path], int] = csv_rows
    licence: str = ""
    local_hint: str = ""  # what to run after fetching (UCF/HMDB need the videos' folder)


def _kinetics(version: str, counts: tuple[int | None, int | None, int | None], short: str) -> Dataset:
    files = tuple(
        OfficialFile(
            f"{split}.csv", n, (f"kinetics-{short}_{alias}.csv", f"kinetics_{short}_{alias}.csv", f"{alias}.csv")
        )
        for split, alias, n in zip(("train", "validate", "test"), ("train", "val", "test"), counts, strict=True)
    )
    return Dataset(
        f"kinetics{version}",
        f"https://storage.googleapis.com/deepmind-media/Datasets/kinetics{version.replace('-', '_')}.tar.gz",
        files,
        licence="annotations CC BY 4.0 (DeepMind); the videos stay on YouTube under their owners' terms",
    )


def _count_lines(path: Path) -> int:
    return len(_lines(path))


def _count_hmdb(path: Path) -> int:
    """For an HMDB split 'file' (a virtual name hmdb51_splitN): train + test videos of the split."""
    n = int(path.name[-1])
    return sum(e.split in ("train", "test") for e in hmdb51_entries(path.parent, n))


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        _kinetics("400", (246534, 19906, 38685), "400"),
        _kinetics("600", (None, 30000, None), "600"),
        _kinetics("700", (None, None, None), "700"),
        _kinetics("700-2020", (None, None, None), "700-2020"),
        Dataset(
            "ucf101",
            "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
            (
                OfficialFile("classInd.txt", 101),
                *(OfficialFile(f"trainlist0{k}.txt", n) for k, n in ((1, 9537), (2, 9586), (3, 9624))),
                *(OfficialFile(f"testlist0{k}.txt", n) for k, n in ((1, 3783), (2, 3734), (3, 3696))),
            ),
            count=_count_lines,
            licence="no licence stated by the publisher (CRCV, University of Central Florida); research use",
            local_hint="flowprep manifests build ucf101 --root DIR  (DIR holds ApplyEyeMakeup/v_*.avi, ...)",
        ),
        Dataset(
            "hmdb51",
            "http://serre-lab.clps.brown.edu/wp-content/uploads/2013/10/test_train_splits.rar",
            # 153 files {class}_test_split{1,2,3}.txt; checked per split: 3,570 train + 1,530 test
            tuple(OfficialFile(f"hmdb51_split{k}", 5100) for k in (1, 2, 3)),
            count=_count_hmdb,
            licence="CC BY 4.0 (Serre lab, Brown University); clips come from films and web video",
            local_hint="flowprep manifests build hmdb51 --root DIR  (DIR holds brush_hair/*.avi, ...)",
        ),
    )
}
ALIASES = {"kinetics": "kinetics400", "kinetics700_2020": "kinetics700-2020"}


def dataset(name: str) -> Dataset:
    name = ALIASES.get(name, name)
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _is_virtual(ds: Dataset) -> bool:
    return ds.name == "hmdb51"  # its checked units are splits made of 51 files each


def check_folder(ds: Dataset, folder: Path) -> tuple[list[str], list[str]]:
    """(problems, missing file names) of ``folder`` against the expected row counts."""
    problems: list[str] = []
    missing: list[str] = []
    for f in ds.files:
        path = folder / f.name
        if not _is_virtual(ds) and not path.is_file():
            missing.append(f.name)
            continue
        try:
            n = ds.count(path)
        except ManifestError as e:
            if _is_virtual(ds) and "no *_test_split" in str(e):
                missing.append(f.name)
            else:
                problems.append(str(e))
            continue
        if f.rows is not None and n != f.rows:
            problems.append(f"{path}: {n} rows, expected {f.rows}")
    return problems, missing


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def record_sums(folder: Path) -> dict[str, str]:
    """Write (first time) or compare (later) SHA256SUMS of the files in ``folder``."""
    sums = {
        p.name: _sha256(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "SHA256SUMS" and not p.name.startswith(".")
    }
    path = folder / "SHA256SUMS"
    if path.is_file():
        old = {name: digest for digest, name in (ln.split(None, 1) for ln in _lines(path))}
        changed = sorted(n for n in sums if n in old and old[n] != sums[n])
        if changed:
            raise FetchManifestError(
                f"{folder}: {', '.join(changed)} differ from the sha256 recorded in {path} (the publisher changed"
                " them, or the download is damaged); delete SHA256SUMS to accept the new files"
            )
        sums = {**old, **sums}
    path.write_text("".join(f"{v}  {k}\n" for k, v in sorted(sums.items())))
    return sums


def _download(url: str, dest: Path, timeout: float) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "flowprep (annotation fetch)"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise FetchManifestError(
            f"cannot download {url}: {reason}.  Without network here, download that file elsewhere and"
            f" run `flowprep manifests fetch <dataset> --from FILE` (the archive or a folder of its files)"
        ) from None


def _extract(archive: Path, into: Path) -> None:
    name = archive.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")  # "data": no absolute paths, links out, devices
    elif name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for m in z.namelist():
                if m.startswith("/") or ".." in Path(m).parts:
                    raise FetchManifestError(f"{archive}: unsafe member {m!r}")
            z.extractall(into)
    elif name.endswith(".rar"):
        for tool, args in (
            ("bsdtar", ["-xf", str(archive), "-C", str(into)]),
            ("unrar", ["x", "-o+", str(archive), str(into) + "/"]),
            ("7z", ["x", "-y", f"-o{into}", str(archive)]),
        ):
            exe = shutil.which(tool)
            if exe:
                subprocess.run([exe, *args], check=True, capture_output=True)
                break
        else:
            raise FetchManifestError(
                f"{archive} is a RAR archive: install bsdtar (libarchive-tools), unrar or 7z to unpack it"
            )
    else:
        raise FetchManifestError(f"{archive}: unknown archive type (expected .tar.gz, .zip or .rar)")


def _collect(ds: Dataset, src: Path, folder: Path) -> list[str]:
    """Copy the dataset's files found anywhere under ``src`` (by name or alias) into ``folder``."""
    found: list[str] = []
    by_name: dict[str, Path] = {}
    for p in src.rglob("*"):
        if p.is_file():
            by_name.setdefault(p.name, p)
    if _is_virtual(ds):
        for name, p in by_name.items():
            if re.fullmatch(r"[A-Za-z_]+_test_split[123]\.txt", name):
                shutil.copyfile(p, folder / name)
                found.append(name)
        return found
    for f in ds.files:
        for n in (f.name, *f.aliases):
            if n in by_name:
                shutil.copyfile(by_name[n], folder / f.name)
                found.append(f.name)
                break
    return found


def fetch_official(
    name: str, root: Path = DATA_MANIFESTS, source: Path | None = None, force: bool = False, timeout: float = 60
) -> str:
    """Fetch (or take from ``source``), check and record one dataset's official files.

    Returns a one-line report.  Raises FetchManifestError when nothing usable arrived or a
    check failed.  Files already present and passing their checks are kept unless ``force``.
    """
    ds = dataset(name)
    folder = root / ds.name
    folder.mkdir(parents=True, exist_ok=True)
    problems, missing = check_folder(ds, folder)
    if not force and not problems and not missing and source is None:
        return f"{ds.name}: {len(ds.files)} official file(s) present and checked in {folder}"
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder) as tmp_s:
        tmp = Path(tmp_s)
        if source is None:
            archive = tmp / ds.url.rsplit("/", 1)[1]
            _download(ds.url, archive, timeout)
            source = archive
        if source.is_file():
            unpacked = tmp / "unpacked"
            unpacked.mkdir()
            _extract(source, unpacked)
            source = unpacked
        if not source.is_dir():
            raise FetchManifestError(f"{source} not found")
        found = _collect(ds, source, folder)
    if not found:
        names = ", ".join(f"{f.name} (or {', '.join(f.aliases)})" if f.aliases else f.name for f in ds.files)
        raise FetchManifestError(f"{ds.name}: none of the official files in {source}; expected {names}")
    problems, missing = check_folder(ds, folder)
    if problems:
        raise FetchManifestError(f"{ds.name}: check failed: " + "; ".join(problems))
    record_sums(folder)
    note = f"; missing: {', '.join(missing)}" if missing else ""
    return f"{ds.name}: {len(ds.files) - len(missing)} official file(s) checked and recorded in {folder}{note}"


def missing_manifest_hint(manifest: Path) -> str | None:
    """What to run when a recipe's manifest is absent, if it belongs to a dataset here."""
    for ds in DATASETS.values():
        if manifest.parent.name == ds.name:
            if ds.local_hint:
                return f"run `flowprep manifests fetch {ds.name}`, then `{ds.local_hint}` first"
            return f"run `flowprep manifests fetch {ds.name}` first (or `make flow DATASET={ds.name}`, which does)"
    return None
