"""The endoscope's video, patient site to master site: stereo rendering, H.264 coding, and the
transport that carries frames over the bridges' links (fragments, forward error correction,
reassembly against a deadline, pacing). Pure Python over numpy, MuJoCo, PyAV and zfec: no rclpy.
"""
