"""modelfleet operator: turns ModelDeployment resources into GPU-scheduled serving workloads."""
