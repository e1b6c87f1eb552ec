"""Drives the ROS 2 node as a robot would (run under a Python with rclpy; ``tests/test_ros2.py``).

    python tests/ros_driver.py CONFIG.json

CONFIG: ``frames`` (paths), ``first_mask`` (path), ``node_pid``, ``burst_seconds``, ``burst_factor``
(the burst's rate as a multiple of the node's measured rate), ``output`` (a folder). It sends bad messages first, registers the object from the first frame over
ROS, plays the later frames one by one (waiting for each answer), then a burst much faster than
the node segments, then saves the classes through the service, and writes ``result.json`` and
``labels.npz`` (the label images received, by frame index).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

CAMERA = QoSProfile(reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST, depth=1)
RELIABLE = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10)
LATCHED = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=1,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
NODE = "/sccan_segmenter"


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1]) if array.ndim >= 2 else 0
    msg.encoding, msg.is_bigendian = encoding, 0
    msg.step = int(array.shape[1] * (array.shape[2] if array.ndim == 3 else 1)) if array.ndim >= 2 else 0
    msg.data = np.ascontiguousarray(array).tobytes()
    return msg


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Driver(Node):
    def __init__(self) -> None:
        super().__init__("sccan_driver")
        self.image = self.create_publisher(Image, f"{NODE}/image", CAMERA)
        self.reg_image = self.create_publisher(Image, f"{NODE}/register/image", RELIABLE)
        self.reg_mask = self.create_publisher(Image, f"{NODE}/register/mask", RELIABLE)
        self.remove = self.create_publisher(String, f"{NODE}/remove", RELIABLE)
        self.save = self.create_client(Trigger, f"{NODE}/save_support")
        self.labels: dict[int, tuple[np.ndarray, float]] = {}  # stamp ns -> (labels, receipt time)
        self.presence: dict[int, dict] = {}
        self.classes: list[str] | None = None
        self.sent: dict[int, float] = {}
        reliable_in = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=100)
        self.labels_sub = self.create_subscription(Image, f"{NODE}/labels", self.on_labels, reliable_in)
        self.presence_sub = self.create_subscription(String, f"{NODE}/presence", self.on_presence, reliable_in)
        self.create_subscription(String, f"{NODE}/classes", self.on_classes, LATCHED)

    def on_labels(self, msg: Image) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        array = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width].copy()
        self.labels[stamp] = (array, time.monotonic(), msg.header.frame_id)

    def on_presence(self, msg: String) -> None:
        data = json.loads(msg.data)
        self.presence[data["stamp"]["sec"] * 10**9 + data["stamp"]["nanosec"]] = data

    def on_classes(self, msg: String) -> None:
        self.classes = json.loads(msg.data)

    def spin_until(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rclpy.spin_once(self, timeout_sec=0.02)
            if condition():
                return True
        return False


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    out = Path(config["output"])
    frames = [cv2.imread(p) for p in config["frames"]]
    first_mask = (cv2.imread(config["first_mask"], cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8) * 255
    pid = int(config["node_pid"])
    rclpy.init()
    d = Driver()
    result: dict = {"steps": []}
    # up, and every topic matched both ways (discovery is asynchronous: a message published before
    # its topic is matched is lost)
    ok = d.spin_until(lambda: d.classes is not None and d.image.get_subscription_count() > 0
                      and d.reg_image.get_subscription_count() > 0 and d.reg_mask.get_subscription_count() > 0
                      and d.labels_sub.get_publisher_count() > 0 and d.presence_sub.get_publisher_count() > 0, 60)
    result["node_up"] = ok
    clock = time.time_ns

    # bad messages: each must be logged and skipped, the node running on (spaced: a frame waiting
    # when the next one arrives is dropped as stale, by design)
    truncated = image_msg(frames[0], "bgr8", clock(), "camera")
    truncated.data = bytes(truncated.data)[:100]
    for bad in (image_msg(np.zeros((4, 4), np.float32), "32FC1", clock(), "camera"),
                image_msg(np.zeros((0, 0, 3), np.uint8), "bgr8", clock(), "camera"), truncated):
        d.image.publish(bad)
        d.spin_until(lambda: False, 0.5)
    d.remove.publish(String(data="no-such-class"))
    stamp = clock()
    d.reg_image.publish(image_msg(frames[0], "bgr8", stamp, "empty"))
    d.reg_mask.publish(image_msg(np.zeros(first_mask.shape, np.uint8), "mono8", stamp, "empty"))
    d.spin_until(lambda: False, 1.0)

    # register the object from the first frame, over ROS
    stamp = clock()
    d.reg_image.publish(image_msg(frames[0], "bgr8", stamp, "object"))
    d.reg_mask.publish(image_msg(first_mask, "mono8", stamp, "object"))
    result["registered"] = d.spin_until(lambda: d.classes == ["object"], 60)

    # the later frames, one at a time: each answer awaited
    paced = []
    for i, frame in enumerate(frames[1:], 1):
        stamp = clock() + i  # distinct stamps
        sent = time.monotonic()
        got, tries = False, 0
        while not got and tries < 5:  # a camera's QoS is best effort: a lost frame is sent again
            tries += 1
            d.image.publish(image_msg(frame, "bgr8", stamp, f"camera_{i}"))
            got = d.spin_until(lambda s=stamp: s in d.labels, 10)
        paced.append({"index": i, "stamp": stamp, "answered": got, "tries": tries,
                      "latency_s": d.labels[stamp][1] - sent if got else None,
                      "frame_id": d.labels[stamp][2] if got else None})
    d.spin_until(lambda: all(p["stamp"] in d.presence for p in paced), 5)
    result["paced"] = paced
    np.savez_compressed(out / "labels.npz", **{str(p["index"]): d.labels[p["stamp"]][0]
                                               for p in paced if p["answered"]})
    result["presence"] = [d.presence.get(p["stamp"]) for p in paced]

    # a burst far faster than the node segments (burst_factor x its rate, measured from the paced
    # frames): stale frames must be dropped, not queued
    frame_time = float(np.median([p["latency_s"] for p in paced if p["answered"]]))
    period = frame_time / config["burst_factor"]
    messages = [image_msg(f, "bgr8", 0, "burst") for f in frames[1:]]  # built once: publishing stays cheap
    rss, burst, start = [rss_mb(pid)], [], time.monotonic()
    i = 0
    while time.monotonic() - start < config["burst_seconds"]:
        stamp = clock()
        d.sent[stamp] = time.monotonic()
        msg = messages[i % len(messages)]
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
        d.image.publish(msg)
        burst.append(stamp)
        i += 1
        rclpy.spin_once(d, timeout_sec=0)
        if i % 20 == 0:
            rss.append(rss_mb(pid))
        time.sleep(max(0.0, start + i * period - time.monotonic()))
    sending = time.monotonic() - start
    d.spin_until(lambda: False, 3.0)  # the last answers
    rss.append(rss_mb(pid))
    answered = [s for s in burst if s in d.labels]
    latencies = [d.labels[s][1] - d.sent[s] for s in answered]
    result["burst"] = {"sent": len(burst), "answered": len(answered), "seconds": config["burst_seconds"],
                       "rate_hz": len(burst) / sending, "latency_s": latencies, "rss_mb": rss}

    # save the classes through the service; the node still answers afterwards
    d.save.wait_for_service(timeout_sec=10)
    future = d.save.call_async(Trigger.Request())
    d.spin_until(future.done, 30)
    response = future.result()
    result["save"] = {"success": bool(response and response.success), "message": response.message if response else ""}
    stamp = clock()
    d.image.publish(image_msg(frames[-1], "bgr8", stamp, "after"))
    result["alive_after"] = d.spin_until(lambda: stamp in d.labels, 30)
    (out / "result.json").write_text(json.dumps(result))
    d.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
