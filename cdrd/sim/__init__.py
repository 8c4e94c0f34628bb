"""
The gateway simulator and load generator (``cdrd-sim``, docs/simulator.md).

- `cdrd.sim.client`: one simulated gateway across connections (GWP/1 client)
- `cdrd.sim.script`: event scripts in the worked-example form
- `cdrd.sim.replay`: a script sent as one gateway, to the last ACK
- `cdrd.sim.load`: N gateways making calls at a rate
- `cdrd.sim.cli`: the console script (the only user of the global reactor)
"""
