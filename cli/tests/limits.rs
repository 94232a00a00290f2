//! `redline limits` against a running RateLimitService.

use redline::limits::{LimitsCommand, TargetArgs, run};
use redline_proto::redline::ratelimit::v1 as pb;
use redline_testkit::Suite;

#[tokio::test]
async fn limits_commands_check_inspect_and_reset() {
    let suite = Suite::builder().workers(0).ratelimit(&[]).start().await;
    let endpoint = format!("http://{}", suite.ratelimit_addr());
    let target = TargetArgs {
        domain: String::new(),
        entries: Vec::new(),
        key: Some("cli-user".to_owned()),
        limits: Some("2 per minute".to_owned()),
    };
    for _ in 0..3 {
        run(
            LimitsCommand::Check {
                target: target.clone(),
                cost: 1,
                dry_run: false,
            },
            &endpoint,
        )
        .await
        .unwrap();
    }
    run(
        LimitsCommand::Inspect {
            target: target.clone(),
        },
        &endpoint,
    )
    .await
    .unwrap();
    let mut client = suite.ratelimit_client();
    let inspect = |client: &mut pb::rate_limit_service_client::RateLimitServiceClient<
        tonic::transport::Channel,
    >| {
        let mut client = client.clone();
        async move {
            client
                .inspect_key(pb::InspectKeyRequest {
                    key: "cli-user".to_owned(),
                    limit_expression: "2 per minute".to_owned(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .limits[0]
                .remaining
        }
    };
    assert_eq!(
        inspect(&mut client).await,
        0,
        "two of three CLI checks consumed quota"
    );
    run(LimitsCommand::Reset { target }, &endpoint)
        .await
        .unwrap();
    assert_eq!(inspect(&mut client).await, 2);
    // A bad request is an error, not a panic.
    let bad = TargetArgs {
        domain: String::new(),
        entries: Vec::new(),
        key: Some("x".to_owned()),
        limits: Some("lots per fortnight".to_owned()),
    };
    assert!(
        run(LimitsCommand::Inspect { target: bad }, &endpoint)
            .await
            .is_err()
    );
}
