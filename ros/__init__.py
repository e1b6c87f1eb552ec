"""SCCAN Edge on ROS 2: the segmenter node (:mod:`sccan.ros.node`, needs rclpy) and its message
conversions (:mod:`sccan.ros.messages`, numpy only)."""
