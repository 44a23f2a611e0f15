"""Regenerate lora_edu/data/wordnet_supersenses.tsv, byte for byte, from WordNet 3.0's data.noun.

The source is Princeton WordNet 3.0 as Debian's ``wordnet-base`` package ships it. Fetch the
package without installing it and point this script at it::

    apt-get download wordnet-base                 # wordnet-base_1%3a3.0-37_all.deb
    python scripts/make_wordnet_subset.py wordnet-base_1%3a3.0-37_all.deb

SOURCE may be the .deb itself (extracted to a temporary folder with ``dpkg-deb -x``), a folder it
was extracted to (``dpkg-deb -x FILE DIR``; ``usr/share/wordnet/data.noun`` is looked up inside),
a folder holding ``data.noun``, or the ``data.noun`` file. The subset is made by
:func:`lora_edu.wordnet.make_supersense_subset` (10 largest noun supersenses, 280/60/60 synsets
per class, seed 0). ``--check`` compares with the shipped file instead of writing it (exit
status 1 if they differ).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

from lora_edu.wordnet import make_supersense_subset, supersense_file


def find_data_noun(source: Path, scratch: Path) -> Path:
    """The data.noun file of ``source`` (a .deb, an extracted tree, a folder, or the file)."""
    if source.is_file() and source.suffix == ".deb":
        subprocess.run(["dpkg-deb", "-x", str(source), str(scratch)], check=True)
        source = scratch
    if source.is_dir():
        for candidate in (source / "usr" / "share" / "wordnet" / "data.noun",
                          source / "data.noun"):
            if candidate.is_file():
                return candidate
        raise SystemExit(f"no data.noun in {source} (looked in usr/share/wordnet/ and the folder)")
    if not source.is_file():
        raise SystemExit(f"{source} does not exist")
    return source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path,
                        help="wordnet-base .deb, its extracted tree, or data.noun")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the subset (default: the shipped file)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the shipped file (or --output) instead of writing")
    args = parser.parse_args(argv)
    target = args.output if args.output is not None else supersense_file()
    with tempfile.TemporaryDirectory() as scratch:
        data_noun = find_data_noun(args.source, Path(scratch))
        raw = data_noun.read_bytes()
    print(f"data.noun: {data_noun.name}, {len(raw):,} bytes, sha256 "
          f"{hashlib.sha256(raw).hexdigest()}")
    content = make_supersense_subset(raw.decode("utf-8")).encode("utf-8")
    if args.check:
        same = target.is_file() and target.read_bytes() == content
        print(f"{target}: {'identical' if same else 'DIFFERS'}")
        return 0 if same else 1
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    print(f"wrote {target} ({len(content):,} bytes, sha256 {hashlib.sha256(content).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
