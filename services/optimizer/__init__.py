"""The action optimizer service: from a start frame, an instruction and a target future to
executable actions, by test-time optimization of a trajectory latent through the frozen plan
generator (MVISTA-4D; core in `wmpo.optimize`). HTTP and gRPC over one runtime and one engine
whose every tick is one batched optimization step of all plans in flight."""
