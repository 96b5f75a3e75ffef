"""A real RTSP server for tests and benchmarks: GStreamer's gst-rtsp-server serving a video file.

Run by the system Python that has GStreamer's introspection bindings (Debian's
``python3-gi`` and ``gir1.2-gst-rtsp-server-1.0``), never imported by the agent::

    /usr/bin/python3 agent/dev/rtsp_serve.py --video demo/video.mp4 --port 0

It prints ``READY <port>`` once it listens, then reads commands from stdin, one
a line, and answers each with ``OK <command>``:

* ``stall``: keep every session up but send no frame (a camera that hangs);
* ``resume``: send frames again.

It exits when stdin closes or on SIGTERM. Each client gets its own pipeline
from the start of the file, H.264 (x264) when the encoder is there, else MJPEG,
paced at the file's frame rate by the pipeline clock. The file is stdlib and
``gi`` only, so it runs outside the agent's virtual environment.

It keeps its own ``main`` (arguments, the ``READY``/``OK`` lines, the exit code)
rather than one in agent/cli/: it is a script of another interpreter, run by path
and spoken to over stdin/stdout, and importing agent.cli would need the agent's
virtual environment, which the system Python does not have.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

MOUNT = "/live"
GATE = "gate"
"""The valve in every session's pipeline that ``stall`` closes."""
H264 = "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay config-interval=-1"
"""A key frame every 15 frames (1 s of the demo video) so a client that joins starts fast."""
MJPEG = "jpegenc quality=85 ! rtpjpegpay"


def launch_line(video: str) -> str:
    encode = H264 if Gst.ElementFactory.find("x264enc") is not None else MJPEG
    return (
        f'( filesrc location="{video}" ! decodebin ! videoconvert ! video/x-raw,format=I420 ! '
        f"valve name={GATE} drop=false ! {encode} name=pay0 pt=96 )"
    )


class Server:
    """The RTSP server and the gates of its sessions' pipelines."""

    def __init__(self, video: str, port: int) -> None:
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address("127.0.0.1")
        self.server.set_service(str(port))
        self.factory = GstRtspServer.RTSPMediaFactory()
        self.factory.set_launch(launch_line(video))
        self.factory.set_shared(False)
        self.factory.connect("media-configure", self._configure)
        self.server.get_mount_points().add_factory(MOUNT, self.factory)
        self.gates: list[Any] = []
        self.stalled = False

    def _configure(self, _factory: Any, media: Any) -> None:
        gate = media.get_element().get_by_name(GATE)
        gate.set_property("drop", self.stalled)
        self.gates.append(gate)

    def command(self, line: str) -> bool:
        """Apply one stdin command on the main loop and answer it; False: GLib runs it once."""
        if line in ("stall", "resume"):
            self.stalled = line == "stall"
            for gate in self.gates:
                gate.set_property("drop", self.stalled)
            print(f"OK {line}", flush=True)
        else:
            print(f"FAILED unknown command {line!r}", flush=True)
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    Gst.init(None)
    server = Server(args.video, args.port)
    if server.server.attach(None) == 0:
        print(f"FAILED cannot listen on 127.0.0.1:{args.port}", flush=True)
        return 1
    loop = GLib.MainLoop()

    def read_commands() -> None:
        for raw in sys.stdin:
            GLib.idle_add(server.command, raw.strip())
        GLib.idle_add(loop.quit)

    signal.signal(signal.SIGTERM, lambda *_: GLib.idle_add(loop.quit))
    threading.Thread(target=read_commands, daemon=True).start()
    print(f"READY {server.server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
