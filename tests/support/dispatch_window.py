"""Measure the window dispatch leaves open (README, Guarantees: Through connection cuts).

`python tests/support/dispatch_window.py postgresql|mysql N`: N dispatches through a proxy
that lets each INSERT commit and swallows its reply, with one idle worker on a direct
connection; prints how many jobs ran twice (the worker ran and acked the first copy before
the producer's retry looked it up) and how long each dispatch took. A measurement, not a test.
"""
import os, subprocess, sys, tempfile, time, uuid
from collections import Counter
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "support"), str(ROOT)]
from tcpproxy import Proxy, free_port
import farm
from farm import app
from testjobs import Record

backend = sys.argv[1]
n = int(sys.argv[2])
url = {"postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
       "mysql": "mysql+pymysql://root@127.0.0.1:3306/test"}[backend]
port = 5432 if backend == "postgresql" else 3306
tmp = tempfile.mkdtemp(prefix="dispatch_window_")
t = "w" + uuid.uuid4().hex[:8]
direct = f"{tmp}/direct.yaml"
open(direct, "w").write(f"imports: [testjobs]\ndefault: main\nconnections:\n  main:\n    driver: database\n    url: {url}\n    table: {t}\n    failed_table: f{t}\n")
proxy = Proxy(free_port(), ("127.0.0.1", port)); proxy.start()
via = f"{tmp}/via.yaml"
open(via, "w").write(open(direct).read().replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy.port}"))
farm.configure(direct); app.queue("main")
out = f"{tmp}/out.txt"
if os.path.exists(out): os.remove(out)
env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests' / 'support'}:{ROOT}")
w = subprocess.Popen([sys.executable, "-m", "farm", "work", "--config", direct, "--sleep", "1"], env=env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(3)
farm.configure(via)
took = []
for i in range(n):
    proxy.swallow_reply_after(f"INSERT INTO {t}".encode())
    s = time.perf_counter()
    farm.dispatch(Record(out, f"j{i}"))
    took.append(time.perf_counter() - s)
    time.sleep(0.3)
time.sleep(2)
w.kill()
c = Counter(l.split()[0] for l in open(out).read().splitlines())
twice = sum(1 for v in c.values() if v > 1)
took.sort()
print(f"{backend}: {n} dispatches whose INSERT reply was lost, live worker: ran {len(c)} jobs, {twice} twice; "
      f"dispatch took median {took[len(took)//2]*1000:.1f} ms, max {took[-1]*1000:.1f} ms; fired {proxy.fired_count}")
