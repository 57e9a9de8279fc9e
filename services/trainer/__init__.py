"""The trainer service: GRPO jobs in imagination, run for clients.

Clients submit a GRPO job (a `wmpo.rl.job.GRPOJobConfig` without `out`), follow
its steps as a stream, cancel it and download the policy checkpoint it writes
after every step. HTTP (`http_api`) and gRPC (`grpc_api`) are thin handlers
over one `TrainerRuntime` (`runtime`): job records (`store`: on disk, or Redis
hashes shared by replicas) and a job work queue (`services.common.queues`: in
process, or a Redis Stream with a consumer group) whose worker runs one job at
a time per replica in a thread, through the core library's `run_grpo_job`.
`server` serves both protocols in one process.
"""
