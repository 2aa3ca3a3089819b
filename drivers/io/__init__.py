"""Line outputs: the interface (`base`), Modbus TCP, Siemens S7, OPC UA, GPIO and log."""
