//! An admin's refund: recorded as asked for, agreed by orders (only a paid order that has not
//! shipped is refunded, decided under the lock that shipping takes), then carried out with
//! `PaymentRefunded`. A refund asked for whose outcome was never settled (payment stopped, or
//! orders could not be reached) is settled by the refund sweep.

use chrono::Utc;
use contracts::internal::{OrderRefund, OrderRefundRequest};
use platform::http::CallError;
use platform::problem::Problem;
use uuid::Uuid;

use crate::Payment;
use crate::store::{self, PaymentRow, Refund};

/// How long a refund asked for is left to the request that asked before the sweep takes it
/// up: the request asks orders once, within its call limit, then settles it.
const LEFT_TO_ITS_REQUEST: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

impl Payment {
    /// Refunds a succeeded payment in full if its order agrees.
    pub(crate) async fn refund(&self, payment: Uuid) -> Result<PaymentRow, Problem> {
        let mut tx = self.base.pool.begin().await?;
        let asked = match store::ask_refund(&mut tx, payment).await? {
            Refund::Payment(row) => row,
            Refund::NotRefundable(status) => {
                return Err(Problem::conflict(format!(
                    "a {status} payment cannot be refunded"
                )));
            }
            Refund::Missing => return Err(Problem::not_found("no such payment")),
        };
        tx.commit().await?;
        self.settle_refund(&asked).await.map_err(|err| match err {
            Unsettled::Refused(problem) | Unsettled::Failed(problem) => problem,
            Unsettled::Waiting(err) => {
                tracing::warn!(error = %err, payment = %asked.id, "refund waits for orders");
                Problem::unavailable(
                    "orders could not be asked whether the order may be refunded; the refund \
                     is recorded and goes ahead by itself once orders agrees (or is dropped if \
                     the order has shipped)",
                    5,
                )
            }
        })
    }

    /// Asks orders to agree to a refund asked for, then carries it out, or forgets it when
    /// orders refuses. Orders can be asked again: it agrees again to an order it refunded.
    async fn settle_refund(&self, asked: &PaymentRow) -> Result<PaymentRow, Unsettled> {
        let agreed = self
            .orders
            .post::<_, OrderRefund>(
                &format!("/internal/orders/{}/refund", asked.order_id),
                &OrderRefundRequest {
                    payment_id: asked.id,
                },
                None,
                true,
            )
            .await;
        match agreed {
            Ok(_) => {}
            // Orders' decision is final: a shipped, delivered or cancelled order never becomes
            // refundable again.
            Err(CallError::Status {
                status: 409, body, ..
            }) => {
                let why = refusal_detail(&body);
                tracing::warn!(payment = %asked.id, order = %asked.order_id, reason = %why, "refund given up: orders refused it");
                store::give_up_refund(&self.base.pool, asked.id)
                    .await
                    .map_err(|e| Unsettled::Failed(e.into()))?;
                return Err(Unsettled::Refused(Problem::conflict(why)));
            }
            Err(err @ (CallError::Unavailable { .. } | CallError::Timeout { .. })) => {
                return Err(Unsettled::Waiting(err));
            }
            // Anything else (an orders instance without this route, 404, during a rolling
            // deploy; a credential it refuses) is not an answer about the order: the refund
            // stays asked for, and the sweep asks again.
            Err(err) => return Err(Unsettled::Failed(Problem::internal(err))),
        }
        let carried_out = async {
            let mut tx = self.base.pool.begin().await?;
            let refunded = store::refund(&mut tx, asked.id).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(refunded)
        };
        match carried_out.await.map_err(|e| Unsettled::Failed(e.into()))? {
            Refund::Payment(row) => {
                self.relay.wake();
                Ok(row)
            }
            // Settled meanwhile by the sweep or a repeated request.
            Refund::NotRefundable(status) if status == "refunded" => {
                store::payment(&self.base.pool, asked.id)
                    .await
                    .map_err(|e| Unsettled::Failed(e.into()))?
                    .ok_or_else(|| Unsettled::Failed(Problem::internal("the payment vanished")))
            }
            Refund::NotRefundable(status) => Err(Unsettled::Refused(Problem::conflict(format!(
                "a {status} payment cannot be refunded"
            )))),
            Refund::Missing => Err(Unsettled::Refused(Problem::not_found("no such payment"))),
        }
    }

    /// Settles refunds asked for and left unsettled by their requests (each taken up again
    /// at most once per `LEFT_TO_ITS_REQUEST`, by one instance); returns how many were settled
    /// (carried out or given up).
    pub async fn settle_refunds_asked(&self) -> Result<usize, Problem> {
        let claimed =
            store::claim_refunds_asked(&self.base.pool, Utc::now() - LEFT_TO_ITS_REQUEST, 100)
                .await?;
        let mut settled = 0;
        for payment in &claimed {
            match self.settle_refund(payment).await {
                Ok(_) | Err(Unsettled::Refused(_)) => settled += 1,
                Err(Unsettled::Waiting(err)) => {
                    tracing::warn!(error = %err, payment = %payment.id, "refunds still wait for orders");
                    break;
                }
                // Logged where it was made; the others are not held up by it.
                Err(Unsettled::Failed(_)) => {}
            }
        }
        Ok(settled)
    }
}

/// Why a refund asked for was not carried out.
enum Unsettled {
    /// Orders or the payment's state refused it: it is given up.
    Refused(Problem),
    /// Orders could not be reached: it stays asked for.
    Waiting(CallError),
    /// Orders answered something other than yes or no, or payment's own database failed: it
    /// stays asked for.
    Failed(Problem),
}

/// What orders' problem said, or its body as it came.
fn refusal_detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}
