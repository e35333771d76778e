"""telesurg: remote robotic surgery over two parallel network links, on ROS 2."""

__version__ = "0.1.0"

import os as _os

#: The process that started this one, read on the package's first import, before the slow ones
#: (rclpy, MuJoCo): a node process asks to die with its parent only once those are done
#: (telesurg.ros.node.run_nodes), and this tells whether the parent died meanwhile.
STARTED_BY_PID = _os.getppid()
