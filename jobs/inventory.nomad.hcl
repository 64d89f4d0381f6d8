# MicroMart inventory: stock and reservations.
#
#   nomad job run -var bin_dir=/opt/micromart/releases/<release> jobs/inventory.nomad.hcl
#
# Config: Consul KV under micromart/shared/ and micromart/inventory/ (consul/kv.json, imported
# with `consul kv import`), rendered into the environment by the template below. Secrets: the
# Nomad variable nomad/jobs/inventory. See jobs/README.md.

# A directory per release: a new path is what changes the job, so that Nomad rolls the new
# binaries out one allocation at a time behind the health check, and what auto_revert goes
# back to. Binaries replaced in place under the same path change nothing Nomad sees: the
# running tasks go on with the old ones until they happen to restart, unchecked.
variable "bin_dir" {
  type        = string
  description = "Directory holding this release's binaries (cargo build --release), one per release."
  default     = "/opt/micromart/bin"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "consul_http_addr" {
  type        = string
  description = "The Consul agent the service reads its KV config from."
  default     = "127.0.0.1:8500"
}

job "inventory" {
  type        = "service"
  datacenters = var.datacenters

  group "inventory" {
    count = 1

    network {
      port "http" {
        # The KV default of micromart/inventory/http_bind (consul/KEYS.md).
        static = 7061
      }
    }

    # On a stop (a rolling update's too), Nomad takes the instance out of Consul, waits this
    # long, then signals the task: the gateway, following Consul, stops sending to it first,
    # and what it sent meanwhile is answered (micromart/shared/shutdown_grace_ms does this
    # for self-registered instances).
    shutdown_delay = "5s"

    # Rolling updates, one allocation at a time, promoted only once the Consul check
    # below passes; a release that never becomes healthy is rolled back.
    update {
      max_parallel      = 1
      health_check      = "checks"
      min_healthy_time  = "10s"
      healthy_deadline  = "3m"
      progress_deadline = "10m"
      auto_revert       = true
    }

    restart {
      attempts = 3
      interval = "5m"
      delay    = "15s"
      mode     = "fail"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "10m"
      unlimited      = true
    }

    # The source of truth for this service in Consul (see jobs/README.md, "Registration").
    service {
      name     = "inventory"
      provider = "consul"
      port     = "http"
      tags     = ["micromart", "nomad"]

      check {
        name     = "inventory /health"
        type     = "http"
        path     = "/health"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "inventory" {
      driver = "raw_exec"

      # A stopping service answers what it has in flight for up to 10 s (a checkout makes up
      # to four calls), then stops its background tasks and relays its outbox once more;
      # Nomad's default of 5 s would kill it midway.
      kill_timeout = "20s"

      config {
        command = "${var.bin_dir}/inventory"
      }

      env {
        CONSUL_HTTP_ADDR = var.consul_http_addr
        # Listen on the port Nomad allocated; the KV value of http_bind is deliberately not
        # rendered below (template env would override this).
        MICROMART_INVENTORY_HTTP_BIND = "0.0.0.0:${NOMAD_PORT_http}"
        # The service block above registers this instance; the binary must not do it again.
        MICROMART_INVENTORY_SELF_REGISTER = "false"
        RUST_LOG = "info"
      }

      # Every non-secret key the service reads (consul/KEYS.md), but http_bind. A change
      # in KV restarts the task with the new value.
      template {
        destination = "local/config.env"
        env         = true
        change_mode = "restart"
        splay       = "10s"
        data        = <<-EOT
          MICROMART_SHARED_REDIS_URL={{ key "micromart/shared/redis_url" | toJSON }}
          MICROMART_SHARED_REDIS_PREFIX={{ key "micromart/shared/redis_prefix" | toJSON }}
          MICROMART_SHARED_JWT_PUBLIC_KEYS={{ key "micromart/shared/jwt_public_keys" | toJSON }}
          MICROMART_SHARED_ADVERTISE_ADDRESS={{ key "micromart/shared/advertise_address" | toJSON }}
          MICROMART_SHARED_SELF_REGISTER={{ key "micromart/shared/self_register" | toJSON }}
          MICROMART_SHARED_SHUTDOWN_GRACE_MS={{ key "micromart/shared/shutdown_grace_ms" | toJSON }}
          MICROMART_SHARED_DATABASE_MAX_CONNECTIONS={{ key "micromart/shared/database_max_connections" | toJSON }}
          MICROMART_SHARED_MAX_BODY_BYTES={{ key "micromart/shared/max_body_bytes" | toJSON }}
          MICROMART_SHARED_CALL_TIMEOUT_MS={{ key "micromart/shared/call_timeout_ms" | toJSON }}
          MICROMART_SHARED_STREAM_CLAIM_IDLE_MS={{ key "micromart/shared/stream_claim_idle_ms" | toJSON }}
          MICROMART_SHARED_STREAM_MAX_DELIVERIES={{ key "micromart/shared/stream_max_deliveries" | toJSON }}
          MICROMART_SHARED_OUTBOX_KEEP_RELAYED_SECONDS={{ key "micromart/shared/outbox_keep_relayed_seconds" | toJSON }}
          MICROMART_SHARED_APPLIED_EVENTS_KEEP_SECONDS={{ key "micromart/shared/applied_events_keep_seconds" | toJSON }}
          MICROMART_SHARED_RETENTION_EVERY_SECONDS={{ key "micromart/shared/retention_every_seconds" | toJSON }}
          MICROMART_INVENTORY_DATABASE_URL={{ key "micromart/inventory/database_url" | toJSON }}
          MICROMART_INVENTORY_LOW_STOCK_THRESHOLD={{ key "micromart/inventory/low_stock_threshold" | toJSON }}
          MICROMART_INVENTORY_RESERVATION_SWEEP_INTERVAL_MS={{ key "micromart/inventory/reservation_sweep_interval_ms" | toJSON }}
          MICROMART_INVENTORY_CALL_TIMEOUT_MS={{ key "micromart/inventory/call_timeout_ms" | toJSON }}
          MICROMART_INVENTORY_MAX_RESERVATION_SECONDS={{ key "micromart/inventory/max_reservation_seconds" | toJSON }}
        EOT
      }

      # Secrets: never in this file nor in Consul KV. They come from the Nomad variable
      # nomad/jobs/inventory, items: internal_token, pgpassword.
      # The operator puts them (jobs/README.md); the Vagrantfile generates them inside the
      # VM. Rendered under secrets/, which the alloc filesystem API does not serve.
      template {
        destination = "secrets/secrets.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/inventory" }}
          MICROMART_SHARED_INTERNAL_TOKEN={{ .internal_token | toJSON }}
          PGPASSWORD={{ .pgpassword | toJSON }}
          {{ end }}
        EOT
      }

      # Measured, not guessed (`ps -o rss` on the development machine, release builds): the
      # users binary alone idles at 18 MB RSS and the whole shop (8 services in one process)
      # at 43 MB; under load (scripts/bench) it stays well below 128 MB per service, which
      # leaves room for pools, argon2's 19 MiB per concurrent hash and bursts.
      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
