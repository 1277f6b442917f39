"""Write the site's OpenAPI document to docs/site-openapi.json (or check it is current).

    python scripts/site_openapi.py          # rewrite the file
    python scripts/site_openapi.py --check  # exit 1 if the file differs from the code

The document is built from the application itself (no server, a throwaway database),
so docs/interconnect.md and this file describe exactly what a site serves.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "docs" / "site-openapi.json"


def openapi_text() -> str:
    sys.path.insert(0, str(REPO))
    from fed.site.api.app import create_app
    from fed.site.config import (
        Federation,
        FederationParty,
        Listen,
        SiteConfig,
        TlsFiles,
    )
    from fed.site.core.db import Database
    from fed.site.service import SiteService

    config = SiteConfig.model_construct(
        party="PARTY", url="https://site.example:443", listen=Listen.model_construct(host="0.0.0.0", port=443),
        database="sqlite://", tls=TlsFiles.model_construct(cert="", key="", ca_cert=""),
        federation=Federation.model_construct(parties={"PARTY": FederationParty.model_construct(
            site="https://site.example:443", channel=None)}))
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/site.db")
        db.migrate()
        app = create_app(SiteService(config, db))
        app.title = "rayfed site"
        text = json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
        db.close()
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = openapi_text()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run python scripts/site_openapi.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
