"""A ROS 2 node: subscribes to ``sensor_msgs/Image``, publishes a mono8 mask and a label image.

Parameters: ``bundle`` (directory), ``support_file`` (from ``Segmenter.save_support``) or
``support_images`` / ``support_masks`` / ``class_name`` (paths, registered at start-up),
``threshold``. Topics: ``~/image`` in, ``~/mask`` (mono8, 255 = any class) and ``~/labels``
(mono8, 0 = background, i = i-th class) out.

    ros2 run ... or: python3 samples/ros2_node.py --ros-args -p bundle:=/path -p support_file:=/path
"""

from __future__ import annotations

import numpy as np

try:
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image
except ImportError:  # the processing below works without ROS; the node needs rclpy
    rclpy = Node = Image = None

ENCODINGS = {"bgr8": "bgr", "rgb8": "rgb", "mono8": "bgr", "bgra8": "bgr", "rgba8": "rgb"}


def image_to_array(height: int, width: int, encoding: str, step: int, data: bytes) -> tuple[np.ndarray, str]:
    """A sensor_msgs/Image's fields -> (H x W x C uint8 array, colour order for the Segmenter)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported image encoding {encoding!r}; use one of {sorted(ENCODINGS)}")
    channels = {"mono8": 1, "bgr8": 3, "rgb8": 3, "bgra8": 4, "rgba8": 4}[encoding]
    rows = np.frombuffer(data, np.uint8).reshape(height, step)[:, :width * channels]
    return rows.reshape(height, width, channels), ENCODINGS[encoding]


def process(segmenter, array: np.ndarray, color: str, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Segment one frame: (mono8 mask, 255 where any class; mono8 label image)."""
    result = segmenter.segment(array, threshold=threshold, color=color)
    labels = result.label_map.astype(np.uint8)
    return np.where(labels > 0, 255, 0).astype(np.uint8), labels


def mono8_message(array: np.ndarray, header):
    msg = Image()
    msg.header = header
    msg.height, msg.width = array.shape
    msg.encoding, msg.is_bigendian, msg.step = "mono8", 0, array.shape[1]
    msg.data = array.tobytes()
    return msg


if Node is not None:
    class SegmenterNode(Node):
        def __init__(self) -> None:
            super().__init__("sccan_segmenter")
            from sccan.sdk import Segmenter

            for name, default in (("bundle", ""), ("support_file", ""), ("class_name", "object"),
                                  ("support_images", [""]), ("support_masks", [""]), ("threshold", 0.5)):
                self.declare_parameter(name, default)
            p = {n: self.get_parameter(n).value for n in ("bundle", "support_file", "class_name", "support_images",
                                                          "support_masks", "threshold")}
            self.segmenter = Segmenter(p["bundle"])
            if p["support_file"]:
                self.segmenter.load_support(p["support_file"])
            images = [x for x in p["support_images"] if x]
            if images:
                import cv2

                self.segmenter.add_class(p["class_name"], [cv2.imread(x) for x in images],
                                         [cv2.imread(x, cv2.IMREAD_GRAYSCALE) for x in p["support_masks"] if x])
            self.threshold = float(p["threshold"])
            self.mask_pub = self.create_publisher(Image, "~/mask", 1)
            self.label_pub = self.create_publisher(Image, "~/labels", 1)
            self.create_subscription(Image, "~/image", self.on_image, 1)
            self.get_logger().info(f"segmenting {self.segmenter.classes} with {self.segmenter.backend.name}")

        def on_image(self, msg) -> None:
            try:
                array, color = image_to_array(msg.height, msg.width, msg.encoding, msg.step, bytes(msg.data))
                mask, labels = process(self.segmenter, array, color, self.threshold)
            except Exception as exc:  # a bad frame must not kill the node
                self.get_logger().warning(f"frame skipped: {exc}")
                return
            self.mask_pub.publish(mono8_message(mask, msg.header))
            self.label_pub.publish(mono8_message(labels, msg.header))


def main() -> None:
    if rclpy is None:
        raise SystemExit("rclpy is not installed: source your ROS 2 setup (e.g. /opt/ros/humble/setup.bash) "
                         "to run this node; process() works without it")
    rclpy.init()
    node = SegmenterNode()
    try:
        rclpy.spin(node)
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    main()
