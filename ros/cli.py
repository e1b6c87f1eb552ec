"""``sccan-ros-node``: starts :mod:`sccan.ros.node`, or says in one line what is missing."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .node import main as node_main
    except ImportError as exc:
        print(f"sccan-ros-node: needs ROS 2's rclpy ({getattr(exc, 'name', None) or exc} is not importable): source "
              "your ROS 2 setup (/opt/ros/jazzy/setup.bash), or pip install -e '.[ros]' and set "
              "LD_LIBRARY_PATH=<venv>/lib", file=sys.stderr)
        return 2
    return node_main()


if __name__ == "__main__":
    sys.exit(main())
