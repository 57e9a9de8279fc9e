"""Generated protobuf/gRPC modules for proto/wmpo/v1 (scripts/gen_proto.sh).

Import as `from wmpo_client.proto import simulator_pb2, tensor_pb2`.
"""
