"""Thin ROS 2 nodes: parameters, QoS, timers and callbacks around telesurg's pure logic."""
