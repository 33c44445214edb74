"""``replicad demo``: the whole loop on this machine, with nothing but the install.

Starts the built-in emulator on a free loopback port, writes ``config.toml``, a token
file and the replica under the demo folder, syncs with a progress bar, changes a few
records remotely, makes local edits with plain SQL, syncs again (push, then pull),
shows the edits upstream and back in the replica, the status, and queries to try next.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from replicad.connectors.emulator import DEFAULT_TOKEN
from replicad.connectors.emulator.server import run_in_thread
from replicad.connectors.emulator_control import EmulatorControl
from replicad.daemon import exits
from replicad.daemon.config import load_config
from replicad.daemon.oneshot import sync_once
from replicad.daemon.status_view import render_status, status_report
from replicad.store.app_sql import edit_locally, read_row
from replicad.store.lock import is_held
from replicad.store.operate import OperatorError, unsent_edits

# Only these are removed when the demo starts over; anything else in the folder stays.
DEMO_FILES = ("config.toml", "token", "replica.db", "replica.db-wal", "replica.db-shm",
              "invoices.db", "invoices.db-wal", "invoices.db-shm")  # fmt: skip

CONFIG = """\
# Written by `replicad demo`: a replica of the built-in emulator's account.
[replica]
path = "replica.db"

[connections.crm]
kind = "sell"
base_url = "{url}"
token_file = "token"
max_retries = 3

[syncs.mirror]
direction = "pull"
connection = "crm"
operation = "mirror"
interval = "30s"

# Local edits of the contact table go back upstream as Endgrate transfers.
[connections.outbound]
kind = "endgrate"
base_url = "{url}"
token_file = "token"
session_id = "replicad-demo"
max_retries = 3

[syncs.contacts-out]
direction = "push"
connection = "outbound"
source = "contact"
object = "crm-contact"

# Another app's own SQLite file (an invoicing tool's invoices.db), diffed each cycle
# as Census does: new and changed invoices are upserted as deals through the CDM.
[connections.cdm]
kind = "cdm"
base_url = "{url}"
token_file = "token"
max_retries = 3

[syncs.invoices-out]
direction = "push"
connection = "cdm"
source = {{ table = "invoices", database = "invoices.db" }}
object = "deal"
operation = "upsert"
mappings = [
  {{ from = "invoice_no", to = "name", is_primary_identifier = true }},
  {{ from = "total", to = "value" }},
  {{ from = "currency", to = "currency" }},
  {{ from = {{ type = "constant_value", data = "invoicing-app" }}, to = "source" }},
]
"""


DEMO_EMAIL = "ada.demo@example.org"
LOCAL_EDITS = (
    f"INSERT INTO contact (first_name, last_name, email) VALUES ('Ada', 'Byron', '{DEMO_EMAIL}')",
    'UPDATE contact SET tags = \'["vip","demo","local"]\' WHERE id = 1',
)


INVOICES = (
    ("INV-1001", "ada.demo@example.org", 1200.0, "EUR", "sent"),
    ("INV-1002", "grace@example.org", 480.5, "USD", "paid"),
    ("INV-1003", "alan@example.org", 99.0, "GBP", "draft"),
)
INVOICE_EDITS = (
    "UPDATE invoices SET total = 1350.0 WHERE invoice_no = 'INV-1001'",
    "INSERT INTO invoices VALUES ('INV-1004', 'edsger@example.org', 64.0, 'EUR', 'sent')",
)


def _invoicing_app(path: Path, statements: tuple[str, ...] = ()) -> None:
    """The invoicing app's own file (the demo plays that app)."""
    create = (
        "CREATE TABLE IF NOT EXISTS invoices (invoice_no TEXT PRIMARY KEY, "
        "customer_email TEXT, total REAL, currency TEXT, status TEXT)"
    )
    rows = ["INSERT INTO invoices VALUES ('{}', '{}', {}, '{}', '{}')".format(*r) for r in INVOICES]
    edit_locally(path, statements or (create, *rows))


def _not_a_demo_folder(folder: Path) -> str | None:
    """Why starting the demo over in ``folder`` could destroy someone's work, if it could."""
    config, replica = folder / "config.toml", folder / "replica.db"
    if config.exists():
        try:
            first = config.read_text(encoding="utf-8").splitlines()[:1]
        except (OSError, UnicodeDecodeError):
            first = []
        if first != [CONFIG.splitlines()[0]]:
            return f"{config} was not written by the demo"
    elif replica.exists():
        return f"{replica} exists and is not the demo's"
    if replica.exists():
        try:
            unsent = unsent_edits(replica)
        except OperatorError as e:
            return str(e)
        if unsent:
            return f"{replica} holds {unsent} local edit{'' if unsent == 1 else 's'} not yet sent"
    return None


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(folder: Path, records: int, force: bool = False) -> int:
    """Run the demo in ``folder``; 0 on success."""
    folder = folder.resolve()
    replica = folder / "replica.db"
    holder = is_held(replica)
    if holder is not None:
        _say(f"replicad: {replica} is in use by process {holder}; stop it first")
        return exits.USAGE
    refusal = None if force else _not_a_demo_folder(folder)
    if refusal is not None:
        print(f"replicad: {refusal}; use another --dir, or --force to start over", file=sys.stderr)
        return exits.USAGE
    folder.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        (folder / name).unlink(missing_ok=True)
    show = sys.stderr.isatty()
    with run_in_thread(records=records, seed=7) as url, EmulatorControl(url) as remote:
        _say(f"1. Emulator of the Sell Sync API serving {records} records at {url}")
        token = folder / "token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(DEFAULT_TOKEN + "\n")
        (folder / "config.toml").write_text(CONFIG.format(url=url), encoding="utf-8")
        _invoicing_app(folder / "invoices.db")
        config = load_config(folder / "config.toml")
        _say(f"2. Wrote {folder / 'config.toml'} and an invoicing app's {folder / 'invoices.db'}")
        _say(f"   ({len(INVOICES)} invoices); first sync into {replica}:")
        code = anyio.run(sync_once, config, show)
        if code:
            return code
        changes = remote.mutate(
            [
                {"op": "update", "type": "contact", "id": 1,
                 "data": {"name": "Ada Lovelace", "tags": ["vip", "demo"]}},
                {"op": "create", "type": "lead",
                 "data": {"first_name": "Grace", "last_name": "Hopper",
                          "organization_name": "Navy", "status": "new"}},
                {"op": "delete", "type": "deal", "id": 2},
            ],
            random=20,
            seed=3,
        )  # fmt: skip
        _say(f"3. Changed {len(changes)} records upstream (updates, creates, deletes).")
        _say("4. Local edits with plain SQL (another app could do the same):")
        for sql in LOCAL_EDITS:
            _say(f"     {sql}")
        edit_locally(replica, LOCAL_EDITS)
        _say("   and in the invoicing app's own file:")
        for sql in INVOICE_EDITS:
            _say(f"     {sql}")
        _invoicing_app(folder / "invoices.db", INVOICE_EDITS)
        _say("   Syncing again (push the edits, then pull):")
        code = anyio.run(sync_once, config, show)
        if code:
            return code
        remote_ids = [
            int(i)
            for i, data in remote.state()["records"]["contact"].items()
            if data.get("email") == DEMO_EMAIL
        ]
        local = read_row(
            replica, "SELECT id, _pending FROM contact WHERE email = ?", (DEMO_EMAIL,)
        ) or (None, None)
        _say(f"   Upstream: contact {remote_ids} has email {DEMO_EMAIL}; locally the row "
             f"now has id {local[0]} and _pending = {local[1]}.")  # fmt: skip
        deals = {
            d.get("name"): d.get("value")
            for d in remote.state()["records"]["deal"].values()
            if d and str(d.get("name", "")).startswith("INV-")
        }
        _say(f"   Upstream deals from the invoices (name: value): {dict(sorted(deals.items()))}")
    _say("5. Status:\n")
    _say(render_status(status_report(config)))
    rel = os.path.relpath(replica)
    _say("6. Try these queries (the replica is plain SQLite; read it while replicad runs):\n")
    _say(f'  sqlite3 {rel} "SELECT id, name, email FROM contact WHERE id = 1"')
    _say(f'  sqlite3 {rel} "SELECT entry, state, op, internal_id, remote_id FROM replicad_outbox"')
    _say(f'  sqlite3 {rel} "SELECT run, sync, status, processed, created, updated '
         'FROM replicad_runs"')  # fmt: skip
    _say(f"  sqlite3 {rel} \"SELECT currency, count(*), round(sum(value)) FROM deal "
         "GROUP BY currency\"")  # fmt: skip
    _say(f"  sqlite3 {rel} \"SELECT json_extract(address, '$.city') AS city, count(*) "
         "FROM contact GROUP BY city ORDER BY 2 DESC LIMIT 5\"")  # fmt: skip
    _say("\n  Without the sqlite3 shell:\n")
    _say(
        f"  python3 -c \"import sqlite3; db = sqlite3.connect('file:{rel}?mode=ro', uri=True); "
        "print(db.execute('SELECT sync, state, last_success FROM replicad_syncs').fetchall())\""
    )
    cfg = os.path.relpath(folder / "config.toml")
    _say(f"\n  replicad commands take this config with --config (or REPLICAD_CONFIG={cfg}):")
    _say(f"  replicad status --config {cfg}")
    return exits.OK
