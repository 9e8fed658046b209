"""What each index of `deliveries` costs SQLite (BENCHMARKS.md, item 45).

Builds the table as the migrations leave it, inserts 100 exploits' deliveries for 1,000
webhooks in fanout order (a transaction per exploit), then records each delivery as
succeeded in transactions of 100, with the statements the SQLite writer uses; process CPU
per row, median of 3, with every index and with one (or all) of them dropped.
Python's own sqlite3 module: the figures are for comparing the rows, not for the service.

    python3 tools/index_costs.py
"""
import os
import sqlite3
import tempfile
import time

def run(drop):
    path=os.path.join(tempfile.gettempdir(), 'kamiyo_index_costs.db')
    for f in (path, path+'-wal', path+'-shm'):
        if os.path.exists(f): os.remove(f)
    c=sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL"); c.execute("PRAGMA cache_size=-16384")
    c.execute("""CREATE TABLE deliveries (id INTEGER PRIMARY KEY, webhook_id INTEGER NOT NULL, exploit_id INTEGER, event TEXT NOT NULL, payload TEXT,
      status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, schedule_base INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER, locked_until INTEGER,
      created_at INTEGER NOT NULL, sent_at INTEGER, delivered_at INTEGER, last_attempt_at INTEGER, status_code INTEGER, latency_ms INTEGER, error TEXT,
      attempt_started_at INTEGER, attempt_error_kind TEXT, attempt_error TEXT, attempt_response_body TEXT)""")
    idx={'by_webhook':"CREATE INDEX by_webhook ON deliveries (webhook_id, id)",
      'finished':"CREATE INDEX finished ON deliveries (webhook_id, last_attempt_at) WHERE status <> 'pending'",
      'due':"CREATE INDEX due ON deliveries (next_attempt_at, webhook_id, locked_until) WHERE status = 'pending'",
      'pending':"CREATE INDEX pending ON deliveries (webhook_id, id) WHERE status = 'pending'",
      'succeeded':"CREATE INDEX succeeded ON deliveries (webhook_id, id) WHERE status = 'succeeded'",
      'failed':"CREATE INDEX failed ON deliveries (webhook_id, id) WHERE status = 'failed'"}
    for k,v in idx.items():
        if k not in drop: c.execute(v)
    W=1000; E=100
    t0=time.process_time()
    now=1000
    for e in range(E):
        c.execute("BEGIN")
        c.executemany("INSERT INTO deliveries (webhook_id, exploit_id, event, status, next_attempt_at, created_at) VALUES (?,?, 'exploit.detected','pending',?,?)", [(w+1,e+1,now+e,now+e) for w in range(W)])
        c.execute("COMMIT")
    t1=time.process_time()
    ids=[r[0] for r in c.execute("SELECT id FROM deliveries ORDER BY id")]
    for i in range(0,len(ids),100):
        c.execute("BEGIN")
        c.executemany("""UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?2, sent_at = COALESCE(sent_at, ?2), status_code = 200, latency_ms = 1, error = NULL,
          locked_until = NULL, status = CASE WHEN status = 'pending' THEN 'succeeded' ELSE status END, next_attempt_at = NULL, delivered_at = ?2,
          attempt_started_at = ?2, attempt_error_kind = NULL, attempt_error = NULL, attempt_response_body = NULL WHERE id = ?1 AND attempt_started_at IS NULL""", [(x, 5000+i) for x in ids[i:i+100]])
        c.execute("COMMIT")
    t2=time.process_time()
    n=W*E
    return (t1-t0)*1e6/n, (t2-t1)*1e6/n
variants=[[],['due'],['pending'],['by_webhook'],['finished'],['succeeded'],['due','pending','by_webhook','finished','succeeded','failed']]
res={}
for rep in range(3):
    for v in variants:
        r=run(v); res.setdefault(','.join(v) or 'all', []).append(r)
for k,v in res.items():
    ins=sorted(x[0] for x in v)[1]; upd=sorted(x[1] for x in v)[1]
    print(f"{k:45s} insert {ins:.2f} us/row  update {upd:.2f} us/row  total {ins+upd:.2f}")
