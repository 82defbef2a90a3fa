"""The gRPC edge: servicers, protobuf conversion, error-to-status mapping. Nothing below imports it."""
