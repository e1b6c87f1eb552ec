"""The ROS 2 segmenter node, as a file to copy into a workspace: it runs :mod:`sccan.ros.node`.

    python3 samples/ros2_node.py --ros-args -p bundle:=/path/to/bundle [-p support_file:=classes.npz]

Topics, parameters and behaviour: see ``sccan.ros.node`` (and docs/ros2.md). ``image_to_array``
and ``process`` work without ROS.
"""

from __future__ import annotations

import numpy as np

from sccan.ros.messages import ENCODINGS, image_to_array  # noqa: F401 - re-exported for the sample's users


def process(segmenter, array: np.ndarray, color: str, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Segment one frame: (mono8 mask, 255 where any class; mono8 label image)."""
    result = segmenter.segment(array, threshold=threshold, color=color)
    labels = result.label_map.astype(np.uint8)
    return np.where(labels > 0, 255, 0).astype(np.uint8), labels


def main() -> int:
    try:
        from sccan.ros.node import main as node_main
    except ImportError as exc:
        raise SystemExit(f"rclpy is not importable ({exc}): source your ROS 2 setup (/opt/ros/jazzy/setup.bash), or "
                         "pip install -e '.[ros]' with LD_LIBRARY_PATH=<venv>/lib") from None
    return node_main()


if __name__ == "__main__":
    raise SystemExit(main())
