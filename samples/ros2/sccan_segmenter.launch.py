"""ROS 2 launch file for the SCCAN segmenter node.

    ros2 launch samples/ros2/sccan_segmenter.launch.py bundle:=/path/to/bundle image:=/camera/image_raw

Remaps the node's ~/image to the camera topic and passes the bundle and support file through.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    args = [DeclareLaunchArgument("bundle"), DeclareLaunchArgument("image", default_value="/camera/image_raw"),
            DeclareLaunchArgument("support_file", default_value=""),
            DeclareLaunchArgument("backend", default_value="auto"),
            DeclareLaunchArgument("threshold", default_value="0.5")]
    node = Node(executable="sccan-ros-node", name="sccan_segmenter", output="screen",
                parameters=[{"bundle": LaunchConfiguration("bundle"),
                             "support_file": LaunchConfiguration("support_file"),
                             "backend": LaunchConfiguration("backend"),
                             "threshold": LaunchConfiguration("threshold")}],
                remappings=[("~/image", LaunchConfiguration("image"))])
    return LaunchDescription([*args, node])
