"""Serving: a trained model answering requests on the devices, with early exits and the edge."""
