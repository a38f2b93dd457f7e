"""Put Mermaid into the docs site, so that its diagrams draw offline (no CDN).

    python docs/vendor_mermaid.py      (``python3 dev.py docs`` runs it before Sphinx)

Mermaid (MIT licensed, like this project) comes from the npm registry, at a pinned
version, with ``npm pack``; npm checks the package's integrity against the registry, and
this script checks the one file it keeps against a pinned SHA-256. The file,
``mermaid.min.js`` (Mermaid's single-file build), and Mermaid's LICENSE go to
``docs/_static/mermaid/``, which is not committed (3.5 MB), and from there into the
built site. A second run finds them and does nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "11.17.2"
SHA256 = "581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8"
TARGET = Path(__file__).resolve().parent / "_static" / "mermaid"
FILES = {"package/dist/mermaid.min.js": "mermaid.min.js", "package/LICENSE": "LICENSE"}


def present() -> bool:
    script = TARGET / "mermaid.min.js"
    return script.exists() and hashlib.sha256(script.read_bytes()).hexdigest() == SHA256


def main() -> None:
    if present():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            "vendor_mermaid: npm is needed once, to fetch Mermaid for the docs site's diagrams"
        )
    with tempfile.TemporaryDirectory(prefix="mermaid-") as tmp:
        print(f"vendor_mermaid: npm pack mermaid@{VERSION}", file=sys.stderr)
        subprocess.run(
            [npm, "pack", f"mermaid@{VERSION}", "--pack-destination", tmp, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (tarball,) = Path(tmp).glob("mermaid-*.tgz")
        TARGET.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as archive:
            for member, name in FILES.items():
                source = archive.extractfile(member)
                assert source is not None, member
                (TARGET / name).write_bytes(source.read())
    if not present():
        (TARGET / "mermaid.min.js").unlink()
        sys.exit(
            f"vendor_mermaid: mermaid@{VERSION}'s mermaid.min.js does not have the pinned SHA-256"
        )


if __name__ == "__main__":
    main()
