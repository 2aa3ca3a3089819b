"""Hardware-facing drivers: cameras (`drivers.camera`) and line outputs (`drivers.io`).

This is the lowest layer of the appliance: it imports neither `pipelines` nor
`appliance`, so a driver can be used and tested on its own.
"""
