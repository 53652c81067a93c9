"""A minimal client of Chromium's DevTools protocol over --remote-debugging-pipe.

Chromium reads commands from file descriptor 3 and writes replies and events to 4,
each a JSON message ended by a NUL byte. Over the pipe no port is picked (nor raced
for) and no websocket framing is needed, so the standard library suffices. One page
target is attached in flat mode: commands to it carry its sessionId.
"""

import fcntl
import json
import os
import select
import subprocess
import tempfile
import time


class DevToolsError(RuntimeError):
    """Chromium exited, did not answer, or refused a command."""


def high_fd(fd):
    """A copy of `fd` numbered 10 or above; `fd` itself is closed."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return copy


class Browser:
    """A headless Chromium and one page in it, driven over the pipe."""

    def __init__(self, binary, profile):
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        # The child's ends move above 9 first, so that placing them on 3 and 4 below
        # cannot close or overwrite one another.
        to_child_r, from_child_w = (high_fd(fd) for fd in (to_child_r, from_child_w))
        args = [
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
        ]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
        # The protocol wants the pipe on fds 3 (commands in) and 4 (replies out).
        shell = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-'
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, binary, *args, "about:blank"],
            pass_fds=(to_child_r, from_child_w),
            stdout=self.log,
            stderr=self.log,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        self.session = None

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except DevToolsError:
            pass  # already gone
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_child)
        os.close(self.from_child)

    def chromium_log(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.from_child], [], [], left)
            if not ready:
                return None
            chunk = os.read(self.from_child, 1 << 20)
            if not chunk:
                try:
                    code = self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    code = "none yet"
                raise DevToolsError(f"chromium closed the pipe (exit code {code}):\n{self.chromium_log()}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method, params=None, session=True, timeout=30):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        try:
            os.write(self.to_child, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise DevToolsError(f"chromium is gone (sending {method}):\n{self.chromium_log()}") from None
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply is None:
                raise DevToolsError(f"chromium did not answer {method} within {timeout} s")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def pump(self, seconds):
        """Collects events for `seconds`; returns them (and forgets them)."""
        deadline = time.monotonic() + seconds
        while True:
            message = self._read_message(deadline)
            if message is None:
                break
            if "method" in message:
                self.events.append(message)
        events, self.events = self.events, []
        return events

    def open(self, url, width, height):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, session=False
        )
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        navigated = self.call("Page.navigate", {"url": url})
        if navigated.get("errorText"):
            raise DevToolsError(f"opening {url}: {navigated['errorText']}")

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"page script error: {result['exceptionDetails']}")
        return result["result"].get("value")
