"""The ROS 2 node: a camera topic in; per frame a mask, a label image, presence and timings out.

    python -m sccan.ros.node --ros-args -p bundle:=/path/to/bundle [-p support_file:=classes.npz]
    ros2 launch samples/ros2/sccan_segmenter.launch.py bundle:=/path/to/bundle

Topics (relative to the node, ``/sccan_segmenter/...`` by default):

=======================  ===================  =========================================================
topic                    type                 what
=======================  ===================  =========================================================
``~/image``              sensor_msgs/Image    in: camera frames (bgr8, rgb8, bgra8, rgba8, mono8); QoS
                                              best effort, depth 1
``~/mask``               sensor_msgs/Image    out: mono8, 255 where any class (the input's header)
``~/labels``             sensor_msgs/Image    out: mono8, 0 background, i the i-th class (the input's header)
``~/presence``           std_msgs/String      out: JSON {stamp: {sec, nanosec}, frame_id, classes, presence}
``~/timings``            std_msgs/String      out: JSON {stamp, frame_id, timings (s), dropped frames}
``~/classes``            std_msgs/String      out: JSON list of the registered classes (latched)
``~/register/image``     sensor_msgs/Image    in: a support image; ``header.frame_id`` is the class name
``~/register/mask``      sensor_msgs/Image    in: its mask (mono8, non-zero = object), same name and stamp
``~/remove``             std_msgs/String      in: a class name to remove
``~/save_support``       std_srvs/Trigger     service: write the classes to the ``save_path`` parameter
=======================  ===================  =========================================================

Frames are segmented in a worker thread, one at a time; a frame that arrives while one is being
segmented replaces the waiting one (stale frames are dropped, never queued), so memory stays flat
and latency bounded when the camera is faster than the model. A bad message (unsupported encoding,
empty or truncated image, unknown class, a registration the model refuses) is logged and skipped;
the node keeps running. SIGINT and SIGTERM stop it cleanly.

Parameters: ``bundle``, ``backend`` (auto / onnxruntime / tensorrt), ``precision`` (fp32 / fp16 /
int8, default the backend's), ``threshold``, ``presence_threshold`` (negative: the bundle's),
``threads`` (0: ONNX Runtime's choice), ``support_file`` (loaded at start-up), ``save_path``.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from sccan.sdk import SCCANError, Segmenter

from .messages import image_to_array, mask_from_image

#: best effort, keep the last frame: a camera's QoS
CAMERA_QOS = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST, depth=1)
#: registrations are few and must not be lost
RELIABLE_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10)
LATCHED_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=1,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: support images waiting for their mask (or masks for their image), at most
PENDING_REGISTRATIONS = 8


def mono8(array: np.ndarray, header: Any) -> Image:
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = "mono8", 0, int(array.shape[1])
    msg.data = np.ascontiguousarray(array, np.uint8).tobytes()
    return msg


def _stamp(header: Any) -> dict[str, int]:
    return {"sec": int(header.stamp.sec), "nanosec": int(header.stamp.nanosec)}


class SegmenterNode(Node):
    """The node; ``segmenter`` may be given (tests), else it is made from the parameters."""

    def __init__(self, segmenter: Segmenter | None = None) -> None:
        super().__init__("sccan_segmenter")
        for name, default in (("bundle", ""), ("backend", "auto"), ("precision", ""), ("threshold", 0.5),
                              ("presence_threshold", -1.0), ("threads", 0), ("support_file", ""),
                              ("save_path", "")):
            self.declare_parameter(name, default)
        p = {n: self.get_parameter(n).value for n in ("bundle", "backend", "precision", "threshold",
                                                      "presence_threshold", "threads", "support_file", "save_path")}
        if segmenter is None:
            if not p["bundle"]:
                raise SCCANError("the bundle parameter is required: --ros-args -p bundle:=/path/to/bundle")
            segmenter = Segmenter(p["bundle"], backend=p["backend"], precision=p["precision"] or None,
                                  threads=int(p["threads"]) or None,
                                  presence_threshold=None if p["presence_threshold"] < 0 else p["presence_threshold"])
        self.segmenter = segmenter
        self.threshold = float(p["threshold"])
        self.save_path = str(p["save_path"])
        if p["support_file"]:
            self.segmenter.load_support(p["support_file"])
        self.mask_pub = self.create_publisher(Image, "~/mask", 1)
        self.label_pub = self.create_publisher(Image, "~/labels", 1)
        self.presence_pub = self.create_publisher(String, "~/presence", 1)
        self.timings_pub = self.create_publisher(String, "~/timings", 1)
        self.classes_pub = self.create_publisher(String, "~/classes", LATCHED_QOS)
        self.create_subscription(Image, "~/image", self.on_image, CAMERA_QOS)
        self.create_subscription(Image, "~/register/image", lambda m: self.on_register(m, "image"), RELIABLE_QOS)
        self.create_subscription(Image, "~/register/mask", lambda m: self.on_register(m, "mask"), RELIABLE_QOS)
        self.create_subscription(String, "~/remove", self.on_remove, RELIABLE_QOS)
        self.create_service(Trigger, "~/save_support", self.on_save)
        self._pending: Image | None = None
        self._received = 0.0
        self._registrations: dict[tuple, dict[str, Image]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.dropped = self.frames = 0
        self._worker = threading.Thread(target=self._work, name="sccan-segment", daemon=True)
        self._worker.start()
        self._publish_classes()
        self.get_logger().info(f"segmenting {self.segmenter.classes} with {self.segmenter.backend.name} "
                               f"{self.segmenter.backend.precision}")

    # -- frames --------------------------------------------------------------------------------------

    def on_image(self, msg: Image) -> None:
        with self._lock:
            if self._pending is not None:
                self.dropped += 1  # a newer frame replaces the one still waiting
            self._pending, self._received = msg, time.monotonic()
        self._wake.set()

    def _work(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(0.1):
                continue
            with self._lock:
                msg, self._pending = self._pending, None
                self._wake.clear()
            if msg is not None:
                self._segment(msg)

    def _segment(self, msg: Image) -> None:
        try:
            array, color = image_to_array(msg.height, msg.width, msg.encoding, msg.step, bytes(msg.data))
            if not self.segmenter.classes:
                return  # nothing registered yet: nothing to publish
            result = self.segmenter.segment(array, threshold=self.threshold, color=color)
        except SCCANError as exc:
            self.get_logger().warning(f"frame skipped: {exc}")
            return
        labels = result.label_map.astype(np.uint8)
        self.mask_pub.publish(mono8(np.where(labels > 0, 255, 0).astype(np.uint8), msg.header))
        self.label_pub.publish(mono8(labels, msg.header))
        stamp = {"stamp": _stamp(msg.header), "frame_id": msg.header.frame_id}
        self.presence_pub.publish(String(data=json.dumps({**stamp, "classes": result.classes,
                                                          "presence": result.presence})))
        self.frames += 1
        self.timings_pub.publish(String(data=json.dumps({**stamp, "timings": result.timings, "frames": self.frames,
                                                         "dropped": self.dropped})))

    # -- classes ---------------------------------------------------------------------------------------

    def on_register(self, msg: Image, part: str) -> None:
        name = msg.header.frame_id
        key = (name, msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self._lock:
            entry = self._registrations.setdefault(key, {})
            entry[part] = msg
            while len(self._registrations) > PENDING_REGISTRATIONS:  # never grows: drop the oldest
                self._registrations.pop(next(iter(self._registrations)))
            if len(entry) < 2:
                return
            del self._registrations[key]
        try:
            if not name:
                raise SCCANError("a registration needs the class name in header.frame_id")
            image, color = image_to_array(entry["image"].height, entry["image"].width, entry["image"].encoding,
                                          entry["image"].step, bytes(entry["image"].data))
            m = entry["mask"]
            mask = mask_from_image(m.height, m.width, m.encoding, m.step, bytes(m.data))
            self.segmenter.add_class(name, [image], [mask], color=color)
        except SCCANError as exc:
            self.get_logger().warning(f"registration of {name!r} refused: {exc}")
            return
        self.get_logger().info(f"registered {name!r}; classes {self.segmenter.classes}")
        self._publish_classes()

    def on_remove(self, msg: String) -> None:
        try:
            self.segmenter.remove_class(msg.data)
        except SCCANError as exc:
            self.get_logger().warning(f"remove refused: {exc.args[0] if exc.args else exc}")
            return
        self.get_logger().info(f"removed {msg.data!r}; classes {self.segmenter.classes}")
        self._publish_classes()

    def on_save(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        try:
            if not self.save_path:
                raise SCCANError("set the save_path parameter to a file path (classes.npz)")
            path = self.segmenter.save_support(self.save_path)
            response.success, response.message = True, str(path)
        except (SCCANError, OSError) as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().warning(f"save_support failed: {exc}")
        return response

    def _publish_classes(self) -> None:
        self.classes_pub.publish(String(data=json.dumps(self.segmenter.classes)))

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._worker.join(5.0)
        self.destroy_node()


def main(args: list[str] | None = None) -> int:
    # `kill -USR1 PID` prints every thread's Python stack to stderr: what a stuck node is doing
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=args)  # installs SIGINT and SIGTERM handlers: spin then ends
    try:
        node = SegmenterNode()
    except SCCANError as exc:
        print(f"sccan_segmenter: error: {exc}", flush=True)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # stderr, not the ROS logger: after a signal its context is gone
        print(f"[sccan_segmenter] stopping after {node.frames} frames ({node.dropped} stale frames dropped)",
              file=sys.stderr, flush=True)
        node.close()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
