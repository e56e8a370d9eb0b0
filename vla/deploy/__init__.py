"""Deployment: a policy server (`server`), and a robot client (`client`, `controller`, `robot`) that
drives a robot through it behind the one safety filter (`vla.sim.safety`). Messages: `wire`."""
