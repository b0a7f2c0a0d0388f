"""Generated protobuf modules of proto/proto/tether.proto (scripts/gen_proto.py). Never edit by hand."""
