"""The surgeon's console page (`telesurg console`): the endoscope view, the arm's and the links'
state, the state command buttons, and a person's hands (keyboard, mouse, gamepad) standing in
for the master device. Pure logic here (hands, view); the web server in server.py; the ROS node
in telesurg.nodes.web_console."""
