"""The SQLite schema, versioned with ``PRAGMA user_version`` and migrated forward.

Each entry of MIGRATIONS takes the database from version i to i+1; a fresh file runs them
all. Projection tables (everything but meta, events, feeds, forks, forks_waiting, pending,
member_keys, peers, invites) can be dropped and rebuilt from ``events`` at any time.
"""

from __future__ import annotations

V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) STRICT;

-- The log: the exact signed bytes, indexed columns, and the local store order (pos).
CREATE TABLE events (
    pos      INTEGER PRIMARY KEY,
    id       BLOB NOT NULL UNIQUE,
    pod      BLOB NOT NULL,
    author   BLOB NOT NULL,
    lane     TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    root     BLOB,             -- the aggregate this event belongs to (request, member...)
    payload  BLOB NOT NULL,
    sig      BLOB NOT NULL,
    body     BLOB,             -- NULL once dropped (forgotten member, redaction)
    dropped  INTEGER NOT NULL DEFAULT 0, -- 1: body dropped on purpose, never refilled
    received INTEGER NOT NULL, -- local wall ms
    origin   BLOB,             -- the peer that delivered it (NULL: written here); never sent back
    UNIQUE (author, lane, seq)
) STRICT;
CREATE INDEX events_root ON events (root) WHERE root IS NOT NULL;
CREATE INDEX events_sealed ON events (pos) WHERE kind = 'sealed';

-- Feed heads, for chaining and repair.
CREATE TABLE feeds (
    author   BLOB NOT NULL,
    lane     TEXT NOT NULL,
    pod      BLOB NOT NULL,
    seq      INTEGER NOT NULL,
    id       BLOB NOT NULL,
    ts       INTEGER NOT NULL,
    PRIMARY KEY (author, lane)
) STRICT, WITHOUT ROWID;

-- Equivocation evidence: a second signed header at an occupied (author, lane, seq).
CREATE TABLE forks (
    author    BLOB NOT NULL,
    lane      TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    kept_id   BLOB NOT NULL,
    other_id  BLOB NOT NULL,
    other_payload BLOB NOT NULL,
    other_sig BLOB NOT NULL,
    source    TEXT NOT NULL,
    received  INTEGER NOT NULL,
    PRIMARY KEY (author, lane, seq, other_id)
) STRICT, WITHOUT ROWID;

-- Events waiting for a feed predecessor or for their author's roster entry.
CREATE TABLE pending (
    id       BLOB PRIMARY KEY,
    source   TEXT NOT NULL,
    author   BLOB NOT NULL,
    lane     TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    wire     BLOB NOT NULL,
    why      TEXT NOT NULL,
    received INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX pending_feed ON pending (author, lane, seq);
CREATE INDEX pending_source ON pending (source, received);

-- Per-member SecretBox keys: deleting a row forgets a member (crypto-shredding).
CREATE TABLE member_keys (member BLOB PRIMARY KEY, key BLOB NOT NULL) STRICT, WITHOUT ROWID;

-- Pods this node peers with, and where each one's sync stands (local state, not events).
CREATE TABLE peers (
    pod BLOB PRIMARY KEY, url TEXT NOT NULL, name TEXT NOT NULL, added INTEGER NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0, epoch BLOB, last_sync INTEGER, removed INTEGER,
    repair INTEGER NOT NULL DEFAULT 0  -- 1 after this store was restored from a backup
) STRICT, WITHOUT ROWID;

-- One-time invite secrets this node has issued (hashes only).
CREATE TABLE invites (
    secret_hash BLOB PRIMARY KEY, created INTEGER NOT NULL, expires INTEGER NOT NULL,
    used_by BLOB, used_at INTEGER
) STRICT, WITHOUT ROWID;

-- ---------------------------------------------------------------- projections
-- Tables keyed by random 32-byte ids are rowid tables: rows append in store order and
-- only the narrow id index takes random inserts (WITHOUT ROWID made every insert split
-- wide pages: measured 916 -> 330 WAL pages per 1,000-event commit for requests).
CREATE TABLE pods (
    pod BLOB PRIMARY KEY, name TEXT NOT NULL, zone TEXT NOT NULL, description TEXT NOT NULL,
    categories TEXT NOT NULL, contact TEXT NOT NULL, founded_ts INTEGER, updated_ts INTEGER
) STRICT, WITHOUT ROWID;

CREATE TABLE roster (
    pod BLOB NOT NULL, key BLOB NOT NULL, name TEXT NOT NULL,
    from_ts INTEGER NOT NULL, until_ts INTEGER, add_id BLOB NOT NULL, remove_id BLOB,
    PRIMARY KEY (pod, key, from_ts)
) STRICT, WITHOUT ROWID;

CREATE TABLE requests (
    id BLOB PRIMARY KEY, pod BLOB NOT NULL, author BLOB NOT NULL, lane TEXT NOT NULL,
    title TEXT NOT NULL, details TEXT NOT NULL, category TEXT NOT NULL, urgency TEXT NOT NULL,
    needed_by TEXT, area TEXT NOT NULL, for_member BLOB, status TEXT NOT NULL,
    accepted_claim BLOB, opened_ts INTEGER NOT NULL, updated_ts INTEGER NOT NULL,
    closed_ts INTEGER, claims INTEGER NOT NULL,
    urgency_rank INTEGER NOT NULL  -- 0 urgent .. 3 low: lists read the index in order
) STRICT;
CREATE INDEX requests_status ON requests (status, urgency_rank, opened_ts);
CREATE INDEX requests_rank ON requests (urgency_rank, opened_ts);

CREATE TABLE claims (
    id BLOB PRIMARY KEY, request BLOB NOT NULL, pod BLOB NOT NULL, author BLOB NOT NULL,
    lane TEXT NOT NULL, by_member BLOB, note TEXT NOT NULL, status TEXT NOT NULL,
    ts INTEGER NOT NULL, decided_ts INTEGER
) STRICT;
CREATE INDEX claims_request ON claims (request);

CREATE TABLE fulfilments (
    id BLOB PRIMARY KEY, request BLOB NOT NULL, pod BLOB NOT NULL, note TEXT NOT NULL,
    hours REAL, ts INTEGER NOT NULL
) STRICT;

CREATE TABLE offers (
    id BLOB PRIMARY KEY, pod BLOB NOT NULL, author BLOB NOT NULL, lane TEXT NOT NULL,
    title TEXT NOT NULL, category TEXT NOT NULL, details TEXT NOT NULL, by_member BLOB,
    availability TEXT NOT NULL, capacity INTEGER, status TEXT NOT NULL,
    opened_ts INTEGER NOT NULL, closed_ts INTEGER
) STRICT;
CREATE INDEX offers_status ON offers (status, opened_ts);

CREATE TABLE members (
    id BLOB PRIMARY KEY, pod BLOB NOT NULL, status TEXT NOT NULL,
    box BLOB, joined_ts INTEGER NOT NULL, updated_ts INTEGER NOT NULL
) STRICT;

CREATE TABLE resources (
    id BLOB PRIMARY KEY, pod BLOB NOT NULL, lane TEXT NOT NULL, name TEXT NOT NULL,
    category TEXT NOT NULL, what TEXT NOT NULL, "where" TEXT NOT NULL, "when" TEXT NOT NULL,
    contact TEXT NOT NULL, ts INTEGER NOT NULL
) STRICT;
"""

#: Projection tables, in the order a rebuild empties them.
PROJECTIONS: tuple[str, ...] = (
    "pods", "roster", "requests", "claims", "fulfilments", "offers", "members", "resources",
)  # fmt: skip

# V2: the root index holds followers only. An anchor's root is its own id, already in the
# id index; indexing it twice cost a random page write per event (measured: 753 of 3,591
# WAL pages per 1,000-event commit at 100k events). Read a root's events with
# ledger.store.of_roots, which asks both indexes.
V2 = """
DROP INDEX events_root;
CREATE INDEX events_root ON events (root) WHERE root IS NOT NULL AND root != id;
"""

# V3: requests, claims, offers and resources are kept at the store position of the event
# that made each row (rowid = events.pos) and lose their index on the random 32-byte id
# (a random page write per row); a lookup by id goes through the events' id index. The
# tables are read-model only: dropped here, refilled by a rebuild when the ledger opens.
V3 = """
DROP TABLE requests;
CREATE TABLE requests (
    id BLOB NOT NULL, pod BLOB NOT NULL, author BLOB NOT NULL, lane TEXT NOT NULL,
    title TEXT NOT NULL, details TEXT NOT NULL, category TEXT NOT NULL, urgency TEXT NOT NULL,
    needed_by TEXT, area TEXT NOT NULL, for_member BLOB, status TEXT NOT NULL,
    accepted_claim BLOB, opened_ts INTEGER NOT NULL, updated_ts INTEGER NOT NULL,
    closed_ts INTEGER, claims INTEGER NOT NULL,
    urgency_rank INTEGER NOT NULL  -- 0 urgent .. 3 low: lists read the index in order
) STRICT;
CREATE INDEX requests_status ON requests (status, urgency_rank, opened_ts);
CREATE INDEX requests_rank ON requests (urgency_rank, opened_ts);

DROP TABLE claims;
CREATE TABLE claims (
    id BLOB NOT NULL, request BLOB NOT NULL, pod BLOB NOT NULL, author BLOB NOT NULL,
    lane TEXT NOT NULL, by_member BLOB, note TEXT NOT NULL, status TEXT NOT NULL,
    ts INTEGER NOT NULL, decided_ts INTEGER
) STRICT;
CREATE INDEX claims_request ON claims (request);

DROP TABLE offers;
CREATE TABLE offers (
    id BLOB NOT NULL, pod BLOB NOT NULL, author BLOB NOT NULL, lane TEXT NOT NULL,
    title TEXT NOT NULL, category TEXT NOT NULL, details TEXT NOT NULL, by_member BLOB,
    availability TEXT NOT NULL, capacity INTEGER, status TEXT NOT NULL,
    opened_ts INTEGER NOT NULL, closed_ts INTEGER
) STRICT;
CREATE INDEX offers_status ON offers (status, opened_ts);

DROP TABLE resources;
CREATE TABLE resources (
    id BLOB NOT NULL, pod BLOB NOT NULL, lane TEXT NOT NULL, name TEXT NOT NULL,
    category TEXT NOT NULL, what TEXT NOT NULL, "where" TEXT NOT NULL, "when" TEXT NOT NULL,
    contact TEXT NOT NULL, ts INTEGER NOT NULL
) STRICT;

INSERT OR REPLACE INTO meta SELECT 'rebuild', x'01' WHERE EXISTS (SELECT 1 FROM events);
"""

# V4: fulfilments by request. A re-folded request reads its fulfilments, and without
# this index each batch that touched a fulfilled request scanned them all.
V4 = """
CREATE INDEX fulfilments_request ON fulfilments (request);
"""

# V5: no index on claims by request. Claims are stored at their claim.make event's
# position, and a request's claim.make events are in the events' root index already: the
# second index on the same random 32-byte ids cost a random page write per claim
# (measured: 151 of 1,858 WAL pages per 1,000-event commit at 50k events). Claims of a
# request are read through events (queries.list_claims) or at known positions (a re-fold).
V5 = """
DROP INDEX IF EXISTS claims_request;
"""

# V6: a roster tenure is keyed by the roster.add that opened it. Keyed by its start time,
# an organizer added, removed and added again within one timestamp (three events, same
# ts, any order of ids) made two tenures with one key, and the batch holding them failed
# on the constraint, in every order: honest events that could never be stored.
V6 = """
DROP TABLE roster;
CREATE TABLE roster (
    pod BLOB NOT NULL, key BLOB NOT NULL, name TEXT NOT NULL,
    from_ts INTEGER NOT NULL, until_ts INTEGER, add_id BLOB NOT NULL, remove_id BLOB,
    PRIMARY KEY (pod, key, add_id)
) STRICT, WITHOUT ROWID;
INSERT OR REPLACE INTO meta SELECT 'rebuild', x'01' WHERE EXISTS (SELECT 1 FROM events);
"""
# The reasons given for a decline and a cancel, which the read model dropped (the help
# says the helper's pod, and every pod the need was shared with, sees them).
V7 = """
ALTER TABLE claims ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE requests ADD COLUMN cancel_reason TEXT NOT NULL DEFAULT '';
INSERT OR REPLACE INTO meta SELECT 'rebuild', x'01' WHERE EXISTS (SELECT 1 FROM events);
"""
# V8: fork evidence is gossiped (docs/protocol.md, Equivocation). A row carries both
# signed headers, since a node that learns of a fork from a peer may hold neither event,
# and gets a local number (``num``, increasing, never reused: AUTOINCREMENT) that peers
# page by. One piece per feed position, the first seen, as ingest already kept it
# (a pair already held, in either order, is at the same position). ``kept_pod`` and
# ``other_pod`` (the headers' pods) decide which peers may see a peers-lane row; rows
# from before V8 get them from the events table and from the header bytes in their
# usual encoding (else NULL: not served on the peers lane), and a kept header found
# nowhere leaves the row shown here but never served. ``gossiped`` is 1 for evidence a
# peer (``source``) sent, 0 where this node refused the other event itself.
# Each peer's cursor into the peer's evidence numbers is ``peers.forks_cursor``.
V8 = """
CREATE TABLE forks_v8 (
    num           INTEGER PRIMARY KEY AUTOINCREMENT,
    author        BLOB NOT NULL,
    lane          TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    kept_id       BLOB NOT NULL,
    kept_pod      BLOB,
    kept_payload  BLOB,
    kept_sig      BLOB,
    other_id      BLOB NOT NULL,
    other_pod     BLOB,
    other_payload BLOB NOT NULL,
    other_sig     BLOB NOT NULL,
    source        TEXT NOT NULL,
    received      INTEGER NOT NULL,
    gossiped      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (author, lane, seq)
) STRICT;
INSERT OR IGNORE INTO forks_v8 (author, lane, seq, kept_id, kept_pod, kept_payload, kept_sig,
    other_id, other_pod, other_payload, other_sig, source, received)
SELECT f.author, f.lane, f.seq, f.kept_id, e.pod, e.payload, e.sig, f.other_id,
    CASE WHEN substr(f.other_payload, 1, 4) = x'9b01c420'
         THEN substr(f.other_payload, 5, 32) END,
    f.other_payload, f.other_sig, f.source, f.received
FROM forks AS f LEFT JOIN events AS e ON e.id = f.kept_id
ORDER BY e.payload IS NULL, f.received, f.other_id;  -- first a row that can be served
DROP TABLE forks;
ALTER TABLE forks_v8 RENAME TO forks;
ALTER TABLE peers ADD COLUMN forks_cursor INTEGER NOT NULL DEFAULT 0;
"""
# V9: the newest fork evidence a peer may be served (every page of changes says it) is
# read through these, in a few steps however many rows there are; scanning the table from
# its newest row passed over every row the peer may not see (a peer that sent 1,000
# pieces made each of its pages read 1,000 rows).
V9 = """
CREATE INDEX forks_network ON forks (num) WHERE lane = 'network' AND kept_payload IS NOT NULL;
CREATE INDEX forks_peers ON forks (kept_pod, num)
    WHERE lane = 'peers' AND kept_payload IS NOT NULL;
"""
# V10: fork evidence a peer sent about a feed position beyond what this node holds (a
# feed it has not received yet, or past its head + 1) waits here for its feed, rather
# than being dropped while the peer's evidence cursor moves past it for good. Unchecked
# (its signatures are checked when its feed reaches it: Ledger.store_forks), one piece
# per feed position and source, bounded per source (Limits.evidence_per_source, counted
# in memory) and dropped after Limits.pending_ttl_s, as parked events are. Rows are up
# to ~4 kB, so a rowid table (WITHOUT ROWID suits narrow rows). Each peer's evidence is
# read once more from its start: what a node before V10 skipped (about a feed it did not
# hold yet) it never asks for again otherwise; pieces held already come back as `held`.
V10 = """
CREATE TABLE forks_waiting (
    id            INTEGER PRIMARY KEY,
    author        BLOB NOT NULL,
    lane          TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    source        TEXT NOT NULL,
    received      INTEGER NOT NULL,
    kept_payload  BLOB NOT NULL,
    kept_sig      BLOB NOT NULL,
    other_payload BLOB NOT NULL,
    other_sig     BLOB NOT NULL,
    UNIQUE (author, lane, seq, source)
) STRICT;
CREATE INDEX forks_waiting_received ON forks_waiting (received);
UPDATE peers SET forks_cursor = 0;
"""
# V11: who made each invite code (the organizer's key that signed POST /v1/invites) and
# when, on the node's clock (``made_in``, a timestamp). A code lives only as long as the
# tenure it was made in: removing an organizer (a lost laptop, a falling-out) takes back
# the codes they handed out but nobody used yet, for good, even if the same key is added
# again later (a tenure begun after the code). Codes made before V11 have no maker and
# stay as good as they were.
V11 = """
ALTER TABLE invites ADD COLUMN made_by BLOB;
ALTER TABLE invites ADD COLUMN made_in INTEGER;
"""
# V12: what `GET /v1/match` reads, found in a few steps however large the network is.
# Open offers by category and pod (oldest first within a pod): the matcher reads the
# offers of the categories of the needs it pairs, a few per pod, where it scanned every
# open offer of the network. A pod's pending claims made for a member: the members
# already offered for a need, where it scanned every claim of the network. Both are
# partial and grow by appending (a pod's rows are in store order), so a write adds one
# entry at the end of its pod's range, not a random page.
V12 = """
CREATE INDEX IF NOT EXISTS offers_open ON offers (category, pod, opened_ts) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS claims_pending ON claims (pod)
    WHERE status = 'pending' AND by_member IS NOT NULL;
"""
# V13: the events' id index holds the first 8 bytes of each id, not all 32. Ids are
# random, so a commit of 1,000 events wrote a page of that index for most of them; with
# entries a third of the size the index has a third of the pages, a commit writes fewer
# of them, and more of it stays in the page cache (`python -m bench._id_index`: raw's
# own insert and COMMIT took 14.2 -> 10.7 us/event at 100k events). A
# lookup names the prefix and the whole id (store.id_is, ids_in, ids_joined): the prefix
# finds the rows, the id picks the one. UNIQUE (id) goes: an id is the hash of a header
# that holds its (author, lane, seq), which stays unique, so two rows with one id would
# be at one feed position. The root index (followers by the aggregate they belong to:
# claims by their request, ~300 random entries per 1,000 events) is kept on prefixes
# too, and read the same way.
# Dropping a column's UNIQUE means rebuilding the table: the log is copied once, in
# store order, and the old table set aside as ``events_v12``. It is dropped after the
# migration's transaction (store.migrate: LEFTOVERS): secure_delete zeroes every page it
# frees, and inside a transaction SQLite would first copy each of those pages to the
# statement journal (temp_store=MEMORY: RAM; ~930 MB at a million events, measured).
V13 = """
DROP INDEX IF EXISTS events_id;
DROP INDEX IF EXISTS events_root;
DROP INDEX IF EXISTS events_sealed;
CREATE TABLE events_v13 (
    pos      INTEGER PRIMARY KEY,
    id       BLOB NOT NULL,
    pod      BLOB NOT NULL,
    author   BLOB NOT NULL,
    lane     TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    root     BLOB,
    payload  BLOB NOT NULL,
    sig      BLOB NOT NULL,
    body     BLOB,
    dropped  INTEGER NOT NULL DEFAULT 0,
    received INTEGER NOT NULL,
    origin   BLOB,
    UNIQUE (author, lane, seq)
) STRICT;
INSERT INTO events_v13 (pos, id, pod, author, lane, seq, ts, kind, root, payload, sig, body,
    dropped, received, origin)
SELECT pos, id, pod, author, lane, seq, ts, kind, root, payload, sig, body, dropped, received,
    origin FROM events ORDER BY pos;
ALTER TABLE events RENAME TO events_v12;
ALTER TABLE events_v13 RENAME TO events;
CREATE INDEX events_id ON events (substr(id, 1, 8));
CREATE INDEX events_root ON events (substr(root, 1, 8)) WHERE root IS NOT NULL AND root != id;
CREATE INDEX events_sealed ON events (pos) WHERE kind = 'sealed';
"""
MIGRATIONS: tuple[str, ...] = (V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12, V13)
SCHEMA_VERSION = len(MIGRATIONS)
# Tables a migration set aside, dropped once it has committed, each in a transaction of
# its own (one statement: no statement journal); again on the next open if that was cut.
LEFTOVERS = ("events_v12",)
# Free disk a migration needs, as a multiple of the file's size, checked before it starts
# (store.migrate): V13 copies the log. Measured at a million events: the file and its WAL
# grew from 1.28 to 2.94 GB at their peak (1.3 x); the margin is for the WAL's own growth.
ROOM = {13: 1.4}
