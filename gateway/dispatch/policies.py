"""The gateway's settings and a job's spec as the scheduler's plain policy data: the
scheduler (gateway/scheduling/) knows neither."""

from __future__ import annotations

from gateway.jobs import JobRun
from gateway.scheduling import JobPolicy, RateLimit, SchedulerConfig
from gateway.settings import GatewayConfig


def scheduler_config(config: GatewayConfig) -> SchedulerConfig:
    """Gateway settings to the scheduler's, per-tenant limits included."""
    weights = dict(config.tenant_weights)
    rates: dict[str, RateLimit] = {}
    for name, tenant in config.tenants.items():
        if tenant.weight is not None:
            weights[name] = tenant.weight
        if tenant.requests_per_s is not None or tenant.tokens_per_s is not None:
            rates[name] = RateLimit(
                tenant.requests_per_s, tenant.burst, tenant.tokens_per_s, tenant.token_burst
            )
    return SchedulerConfig(
        tenant_weights=weights,
        tenant_rate_limits=rates,
        aging_per_s=config.aging_per_s,
        max_batch_tasks=config.batch_tasks,
        max_batch_tokens=config.batch_tokens,
    )


def job_policy(job: JobRun) -> JobPolicy:
    """What the scheduler needs of a job: its tenant, priority, model, limits, sharding."""
    spec = job.spec
    rate = None
    if spec.schedule.rate_limit is not None:
        r = spec.schedule.rate_limit
        rate = RateLimit(r.requests_per_s, r.burst, r.tokens_per_s, r.token_burst)
    return JobPolicy(
        job_id=job.job_id,
        tenant=job.record.tenant,
        priority=job.record.priority,
        model=job.record.model,
        task_type=job.record.task_type,
        rate=rate,
        max_inflight=spec.schedule.max_inflight,
        shard=spec.shard.strategy,
        submitted_at=job.record.created_at,
    )
