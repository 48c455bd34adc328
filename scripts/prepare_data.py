#!/usr/bin/env python3
"""Prepare a small real train/val set of photographs from Debian wallpaper packages.

    python scripts/prepare_data.py --work data/photos [--val 6] [--seed 0]

Steps: `apt-get download` each package into WORK/debs (skipped if the .deb is already there),
`dpkg -x` into WORK/extract/<package>, pick the photographs (rules below), convert to RGB PNG
(JPEG sources downscaled 2x with antialiased bicubic to hide compression artefacts), split
deterministically into WORK/train and WORK/val, and write WORK/manifest.json with the source
package/version/path, size and licence of every image (from the package's DEP-5 copyright file
and, for KDE wallpapers, their metadata.json). The images are never to be committed.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

# package -> (glob of photo files inside the extracted tree, file names to exclude)
PACKAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "lomiri-wallpapers-16.04": ("usr/share/backgrounds/*.jpg", ("analogpattern_by_Peter_Nerlich.jpg",)),
    "mate-backgrounds": ("usr/share/backgrounds/mate/nature/*.jpg", ()),
    # KDE ships each photo at many nominal sizes that are the same file: keep one per wallpaper.
    "plasma-workspace-wallpapers": ("usr/share/wallpapers/*/contents/images/2560x1600.jpg", ()),
    "lxqt-themes": ("usr/share/lxqt/wallpapers/*", ("waves-purple-logo.jpg", "Valendas.png")),
}
MIN_SIDE = 1024  # drops previews, icons and portrait phone variants


def run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
    return proc.stdout


def fetch(package: str, work: Path) -> tuple[Path, str]:
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        run(["apt-get", "download", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise SystemExit(f"apt-get download {package} produced no .deb in {debs}")
    deb = found[-1]
    version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    root = work / "extract" / package
    if not root.is_dir():
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        run(["dpkg", "-x", str(deb), str(tmp)])
        tmp.rename(root)
    return root, version


def parse_dep5(path: Path) -> list[tuple[list[str], str]]:
    """(file patterns, licence) for each Files paragraph of a DEP-5 copyright file."""
    if not path.is_file():
        return []
    out = []
    for para in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", para, re.M)
        lic = re.search(r"^License:\s*(\S.*)$", para, re.M)
        if files and lic:
            out.append((files.group(1).split(), lic.group(1).strip()))
    return out


def licence_for(photo: Path, root: Path, dep5: list[tuple[list[str], str]]) -> str:
    """Last matching DEP-5 paragraph wins; patterns are matched against path suffixes because
    they name the source tree, not the installed layout."""
    parts = photo.relative_to(root).parts
    suffixes = ["/".join(parts[-k:]) for k in range(1, len(parts) + 1)]
    best = None
    for patterns, lic in dep5:
        for pat in patterns:
            # A source-tree directory ("16.04/x.jpg") may differ from the installed one: also
            # accept a match of the file name alone when the pattern names a specific file.
            tail = pat.rsplit("/", 1)[-1]
            if any(fnmatch.fnmatch(s, pat) for s in suffixes) or ("*" not in tail and tail == photo.name):
                best = lic
    meta = next((p / "metadata.json" for p in photo.parents if (p / "metadata.json").is_file()), None)
    if meta is not None:
        try:
            plugin = json.loads(meta.read_text(encoding="utf-8")).get("KPlugin", {})
            authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
            if plugin.get("License"):
                return f"{plugin['License']} (metadata.json; authors: {authors})"
        except (ValueError, AttributeError):
            pass
    return best or "unknown (see package copyright file)"


def convert(src: Path, dst: Path) -> tuple[int, int]:
    with Image.open(src) as im:
        is_jpeg = im.format == "JPEG"
        im = im.convert("RGB")
        if is_jpeg:
            im = im.resize((im.width // 2, im.height // 2), Image.Resampling.BICUBIC, reducing_gap=None)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".partial.png")
        im.save(tmp, format="PNG")
        tmp.replace(dst)
        return im.size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="work folder (debs, extract, train, val, manifest)")
    ap.add_argument("--val", type=int, default=6, help="number of validation images (default 6)")
    ap.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    ap.add_argument("--packages", nargs="*", default=list(PACKAGES), help="subset of the known packages")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.packages) - set(PACKAGES))
    if unknown:
        ap.error(f"unknown package(s): {', '.join(unknown)}; known: {', '.join(PACKAGES)}")

    records = []
    for package in args.packages:
        root, version = fetch(package, args.work)
        dep5 = parse_dep5(root / "usr/share/doc" / package / "copyright")
        pattern, exclude = PACKAGES[package]
        for photo in sorted(root.glob(pattern)):
            if photo.name in exclude or "logo" in photo.name.lower():
                continue
            try:
                with Image.open(photo) as im:
                    size, mode = im.size, im.mode
            except OSError:
                continue
            if min(size) < MIN_SIDE or mode not in ("RGB", "P"):  # grey and alpha images are not photos here
                continue
            rel = photo.relative_to(root).as_posix()
            stem = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{package}__{rel.rsplit('.', 1)[0].split('/', 3)[-1]}")
            records.append({"name": stem + ".png", "package": package, "version": version, "source": rel,
                            "source_size": list(size), "licence": licence_for(photo, root, dep5),
                            "copyright_file": f"/usr/share/doc/{package}/copyright"})
    if len(records) <= args.val:
        raise SystemExit(f"only {len(records)} photos found; cannot hold out {args.val} for validation")

    # Split by a seeded hash of the name: independent of package order and of the file system.
    def key(r: dict) -> str:
        return hashlib.sha256(f"{args.seed}:{r['name']}".encode()).hexdigest()

    val_names = {r["name"] for r in sorted(records, key=key)[: args.val]}
    for r in records:
        r["split"] = "val" if r["name"] in val_names else "train"
        dst = args.work / r["split"] / r["name"]
        src = args.work / "extract" / r["package"] / r["source"]
        if dst.is_file():
            with Image.open(dst) as im:
                r["size"] = list(im.size)
        else:
            r["size"] = list(convert(src, dst))
        r["downscaled_2x"] = src.suffix.lower() in (".jpg", ".jpeg")
    manifest = {"seed": args.seed, "val": args.val, "images": records}
    tmp = args.work / "manifest.json.partial"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    tmp.replace(args.work / "manifest.json")
    n_train = sum(r["split"] == "train" for r in records)
    print(f"{n_train} train + {len(records) - n_train} val images in {args.work} (manifest.json lists licences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
