"""telesurg: remote robotic surgery over two parallel network links, on ROS 2."""

__version__ = "0.1.0"
