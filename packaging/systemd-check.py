#!/usr/bin/env python3
"""Runs inside the container booted by packaging/systemd-test.sh, under systemd as PID 1,
as the unit kp-check.service after kp-gateway.service. Checks the packaged unit for real:
Type=notify readiness, the watchdog fed (and enforced), a serial PTY opened through the
unit's device policy (and a UART node reaching its driver), `systemctl reload` applying a changed configuration in the same
process, the web page claimed and an upstream saved on it, a clean stop; and, at a second
boot after an upgrade, that the page's version, the admin and the buffer were kept. Writes PASS or FAIL with the reason to /root/kp-check.result and
powers the container off. Only loopback traffic (the container has no other network)."""

import grp
import http.cookiejar
import json
import os
import re
import stat
import subprocess
import sys
import time
import traceback
import urllib.parse
import urllib.request

RESULT = "/root/kp-check.result"
UNIT = "kp-gateway.service"
DROPIN = "/etc/kp-gateway/conf.d/20-sensor.toml"
TTY_LINK = "/run/kp-test/ttyKP0"
UART = "/dev/ttyS9"
PASSWORD = "nspawn check password"
KEPT = "/root/kp-check.pending"


def log(msg):
    print(f"kp-check: {msg}", flush=True)


def show(prop):
    return subprocess.run(["systemctl", "show", "-p", prop, "--value", UNIT],
                          capture_output=True, text=True, check=True).stdout.strip()


def wait_for(what, cond, timeout=90):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def metrics():
    try:
        with urllib.request.urlopen("http://127.0.0.1:8088/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def metric(text, name, labels=""):
    m = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


class Page:
    """The web page as a browser uses it: cookies, the CSRF field of each form."""

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        self.op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path):
        with self.op.open("http://127.0.0.1:8088" + path, timeout=30) as r:
            return r.read().decode()

    def post(self, path, form):
        data = urllib.parse.urlencode(form).encode()
        with self.op.open("http://127.0.0.1:8088" + path, data, timeout=60) as r:
            return r.read().decode()

    def csrf(self, path):
        return re.search(r'name="csrf" value="([0-9a-f]+)"', self.get(path)).group(1)


def journal():
    return subprocess.run(["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"],
                          capture_output=True, text=True).stdout


def main():
    # 1. Type=notify: "active (running)" is only reached once the daemon said READY=1.
    wait_for("kp-gateway active", lambda: show("ActiveState") == "active")
    assert show("Type") == "notify", show("Type")
    assert show("SubState") == "running", show("SubState")
    pid = show("MainPID")
    log(f"active (running), Type=notify, MainPID {pid}")
    wait_for("the web page's /metrics on loopback", lambda: metric(metrics(), "kpgw_upstream_connected") is not None)
    assert "first run: no upstream configured yet" in journal()

    # 2. The watchdog (WatchdogSec=6 from the test's drop-in) is fed: systemd records each
    # WATCHDOG=1; three distinct keep-alives, same process, no restart.
    assert show("WatchdogUSec") == "6s", show("WatchdogUSec")
    seen = set()

    def pinged():
        seen.add(show("WatchdogTimestampMonotonic"))
        return len(seen) >= 4
    t0 = time.monotonic()
    wait_for("three watchdog keep-alives", pinged, timeout=60)
    assert show("MainPID") == pid and show("NRestarts") == "0"
    log(f"watchdog fed: keep-alives at {sorted(seen)} µs (monotonic) within {time.monotonic() - t0:.1f} s, no restart")

    # 3. A PTY (a virtual serial port, as socat makes) owned like a serial port and a
    # 16550 port node with no UART behind it, a drop-in configuration naming both,
    # `systemctl reload`: the same process reads the PTY (the "closed" policy keeps PTYs)
    # and reaches the UART driver (the unit's ttyS rule: "no such device", not "not
    # permitted").
    dialout = grp.getgrnam("dialout").gr_gid
    master, slave = os.openpty()
    slave_path = os.ttyname(slave)
    os.chown(slave_path, 0, dialout)
    os.chmod(slave_path, 0o660)
    os.makedirs(os.path.dirname(TTY_LINK), exist_ok=True)
    os.symlink(slave_path, TTY_LINK)
    os.mknod(UART, 0o660 | stat.S_IFCHR, os.makedev(4, 73))
    os.chown(UART, 0, dialout)
    os.chmod(UART, 0o660)
    with open(DROPIN, "w") as f:
        f.write(f"""[[devices]]
name = "probe"
token = "probe-token"
app_version = "site-v1"
[devices.serial_line]
port = "{TTY_LINK}"
format = "key_value"

[[devices]]
name = "uart"
token = "uart-token"
app_version = "site-v1"
[devices.serial_line]
port = "{UART}"
format = "key_value"
""")
    subprocess.run(["systemctl", "reload", UNIT], check=True)
    wait_for("the PTY opened", lambda: f"reading {TTY_LINK}" in journal())
    assert show("MainPID") == pid, "reload kept the process"
    n = 0

    def buffered():
        nonlocal n
        n += 1
        os.write(master, f"temp={20 + n % 5} seq={n}\r\n".encode())
        v = metric(metrics(), "kpgw_buffer_pending_samples")
        return v is not None and v >= 5
    wait_for("samples from the PTY in the buffer", buffered)
    wait_for("the UART driver's answer", lambda: f"cannot open {UART}: No such device or address" in journal())
    assert "Operation not permitted" not in journal()
    log(f"reload applied in process {pid}; {slave_path} read, {UART} reached its driver")

    # The policy is enforced here (else the step above proves nothing): without the
    # unit's rules the same opens are refused.
    for policy, path in ((["DevicePolicy=strict"], slave_path),
                         (["DevicePolicy=closed"], UART)):
        if path == slave_path:
            # The gateway holds the first PTY exclusively: another one, owned the same way.
            _m2, s2 = os.openpty()
            path = os.ttyname(s2)
            os.chown(path, 0, dialout)
            os.chmod(path, 0o660)
        props = [a for p in policy + ["User=kp-gateway", "SupplementaryGroups=dialout"] for a in ("-p", p)]
        probe = subprocess.run(["systemd-run", "--wait", "--pipe", "--quiet", *props,
                                "/usr/bin/python3", "-c", f"open({path!r}, 'rb')"],
                               capture_output=True, text=True)
        if not (probe.returncode != 0 and "Operation not permitted" in probe.stderr):
            raise AssertionError(f"the device policy is not enforced here: {policy} open({path}) gave "
                                 f"{probe.returncode} {probe.stderr!r}")
    log("control: without the rules both opens are refused (the device policy is enforced)")

    # 4. The page under the unit: claim with the setup code, save an upstream (applied in
    # the same process; the version becomes the active one, kept across upgrades).
    page = Page()
    page.get("/setup")
    pre = next(c.value for c in page.jar if c.name == "kpgw_pre")
    with open("/var/lib/kp-gateway/web/setup-code") as f:
        code = f.read().strip()
    page.post("/setup", {"csrf": pre, "code": code, "password": PASSWORD, "password2": PASSWORD})
    page.post("/config/upstream", {"csrf": page.csrf("/config/upstream"), "host": "127.0.0.1",
                                   "port": "1", "client_id": "nspawn-check"})
    status = json.loads(page.get("/api/status"))
    assert status["upstream"]["broker"].endswith("127.0.0.1:1"), status["upstream"]
    assert show("MainPID") == pid
    log("claimed on the page, an upstream saved and applied in the same process")

    # 5. The watchdog is enforced: a frozen daemon is killed and restarted by systemd.
    subprocess.run(["kill", "-STOP", pid], check=True)
    wait_for("the watchdog restart", lambda: show("NRestarts") == "1" and show("ActiveState") == "active"
             and show("MainPID") not in ("0", pid), timeout=90)
    assert "Watchdog timeout" in subprocess.run(["journalctl", "--no-pager", "-o", "cat"],
                                                capture_output=True, text=True).stdout
    log("frozen daemon: watchdog timeout, restarted")

    # 6. A clean stop: exit 0; what is buffered is noted for the upgrade phase.
    kept = wait_for("the buffer's depth", lambda: metric(metrics(), "kpgw_buffer_pending_samples"))
    subprocess.run(["systemctl", "stop", UNIT], check=True)
    assert show("Result") == "success", show("Result")
    assert show("ExecMainStatus") == "0", show("ExecMainStatus")
    log(f"stopped cleanly (exit 0), {kept:.0f} samples buffered")
    with open(KEPT, "w") as f:
        f.write(f"{kept:.0f}\n")


def after_upgrade():
    """The second boot, after the package was upgraded over the first one's state."""
    wait_for("kp-gateway active", lambda: show("ActiveState") == "active")
    assert show("SubState") == "running" and show("NRestarts") == "0"
    wait_for("/metrics", lambda: metric(metrics(), "kpgw_buffer_pending_samples") is not None)
    said = journal()
    assert re.search(r"configuration: version \d+ of the history is in force", said), said[-2000:]
    with open(KEPT) as f:
        before = int(f.read())
    now = metric(metrics(), "kpgw_buffer_pending_samples")
    assert now >= before > 0, (now, before)
    page = Page()
    page.post("/login", {"csrf": page.csrf("/login"), "password": PASSWORD})
    status = json.loads(page.get("/api/status"))
    assert status["upstream"]["broker"].endswith("127.0.0.1:1"), status["upstream"]
    log(f"after the upgrade: the page's version in force, the admin login kept, {now:.0f} >= {before} samples buffered")
    subprocess.run(["systemctl", "stop", UNIT], check=True)
    assert show("Result") == "success"


if __name__ == "__main__":
    try:
        phase = open("/etc/kp-check-phase").read().strip()
        {"first": main, "upgraded": after_upgrade}[phase]()
        outcome = "PASS\n"
    except BaseException:
        outcome = "FAIL\n" + traceback.format_exc()
        print(outcome, file=sys.stderr, flush=True)
        outcome += "\n--- journal of kp-gateway ---\n" + journal()[-6000:]
    with open(RESULT, "w") as f:
        f.write(outcome)
    subprocess.run(["systemctl", "poweroff", "--no-block"])
