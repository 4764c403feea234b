//! `kiln gc` judges each resource by its own generation (issue 21): a failed forced rebuild under
//! a build id must not cost the image an earlier generation of that build id shipped.

use crate::support::{Emulator, Janitor, tagged_generation_resources, unique, with_janitor};

/// What one generation of a build made: a volume, the snapshot its AMI maps, a snapshot no image
/// maps, and the AMI.
#[derive(Debug, Clone)]
struct Made {
    volume: String,
    mapped: String,
    unmapped: String,
    image: String,
}

/// Creates a volume, two snapshots of it and an AMI mapping the first, tagged as build `build`'s
/// and (unless `None`) generation `generation`'s, all tracked by the janitor.
async fn made_by(
    ec2: &aws_sdk_ec2::Client,
    janitor: &Janitor,
    region: &str,
    build: &str,
    generation: Option<&str>,
) -> Made {
    let (volume, snaps, image) =
        tagged_generation_resources(ec2, janitor, region, build, generation, 2).await;
    Made {
        volume,
        mapped: snaps[0].clone(),
        unmapped: snaps[1].clone(),
        image,
    }
}

/// Whether each of `made`'s resources exists: [volume, mapped snapshot, unmapped snapshot, image].
async fn state(ec2: &aws_sdk_ec2::Client, made: &Made) -> [bool; 4] {
    let volume = ec2
        .describe_volumes()
        .volume_ids(&made.volume)
        .send()
        .await
        .is_ok_and(|o| !o.volumes().is_empty());
    let mut snaps = [false; 2];
    for (i, s) in [&made.mapped, &made.unmapped].into_iter().enumerate() {
        snaps[i] = ec2
            .describe_snapshots()
            .snapshot_ids(s)
            .send()
            .await
            .is_ok_and(|o| !o.snapshots().is_empty());
    }
    let image = ec2
        .describe_images()
        .image_ids(&made.image)
        .send()
        .await
        .is_ok_and(|o| !o.images().is_empty());
    [volume, snaps[0], snaps[1], image]
}

/// Build id X: generation G1 succeeded (AMI A, its snapshot, a leftover volume and snapshot),
/// then a forced rebuild, generation G2, failed (AMI B) and its journal replaced G1's; one more AMI
/// of X carries no generation tag (made before generations). `kiln gc` removes everything of G2,
/// keeps everything of G1 and the untagged AMI (logging why, naming both generations), and
/// deletes the failed journal; a second run, without a journal, still keeps both AMIs.
#[tokio::test]
async fn gc_keeps_an_earlier_generation_when_a_forced_rebuild_fails() {
    with_janitor(|janitor| async move {
        let emu = Emulator::get();
        let region = emu.region().to_owned();
        let c = emu.clients(&region).await;
        let bucket = unique("gcgen");
        c.s3.create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("bucket");
        let build = unique("gcgen");
        let (g1, g2) = (
            "5b0c1d2e3f4a4b5c8d9e0f1a2b3c4d5e",
            "a7e6d5c4b3a24f1e9d8c7b6a5f4e3d2c",
        );
        let first = made_by(&c.ec2, &janitor, &region, &build, Some(g1)).await;
        let legacy = made_by(&c.ec2, &janitor, &region, &build, None).await;
        let second = made_by(&c.ec2, &janitor, &region, &build, Some(g2)).await;
        // The forced rebuild's journal: generation G2, failed (G1's succeeded journal is gone).
        let journal = serde_json::json!({"build_id": build, "owner": null, "lease_expires": 0,
            "attempt": 1, "generation": g2, "status": "failed", "steps": []});
        let key = format!("checkpoints/{build}.json");
        c.s3.put_object()
            .bucket(&bucket)
            .key(&key)
            .body(journal.to_string().into_bytes().into())
            .send()
            .await
            .expect("journal");
        let gc = |dry: bool| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
            cmd.args(["gc", "--bucket", &bucket, "--older-than", "0s"]);
            cmd.args(["--build-id", &build]);
            if dry {
                cmd.arg("--dry-run");
            }
            for (k, v) in &emu.vars {
                cmd.env(k, v);
            }
            // The kept resources are logged at info.
            cmd.env("RUST_LOG", "kiln=info").env("NO_COLOR", "1");
            let out = cmd.output().expect("kiln gc");
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
            assert!(out.status.success(), "{stdout}\n{stderr}");
            (stdout, stderr)
        };

        let (dry, log) = gc(true);
        let all = format!("{dry}\n{log}");
        assert!(
            dry.contains(&format!("image {} (build {build})", second.image))
                && dry.contains("would delete"),
            "the dry run names G2's AMI:\n{all}"
        );
        for id in [&first.image, &first.mapped, &first.volume, &legacy.image] {
            assert!(
                !dry.contains(id.as_str()),
                "the dry run would delete {id}:\n{all}"
            );
        }
        let kept_line = log
            .lines()
            .find(|l| l.contains(&first.image))
            .unwrap_or_else(|| panic!("gc logs why it keeps G1's AMI:\n{all}"));
        assert!(
            kept_line.contains(&format!("generation {g1}"))
                && kept_line.contains(&format!("generation {g2}")),
            "the reason names both generations: {kept_line}"
        );
        for m in [&first, &legacy, &second] {
            assert_eq!(
                state(&c.ec2, m).await,
                [true; 4],
                "--dry-run deleted some of {m:?}:\n{all}"
            );
        }

        let (out, log) = gc(false);
        let all = format!("{out}\n{log}");
        assert_eq!(
            state(&c.ec2, &second).await,
            [false; 4],
            "the failed generation's resources are gone:\n{all}"
        );
        assert_eq!(
            state(&c.ec2, &first).await,
            [true; 4],
            "the earlier generation (AMI A, its snapshot, its leftovers) is kept:\n{all}"
        );
        assert_eq!(
            state(&c.ec2, &legacy).await,
            [true; 4],
            "what carries no generation tag is kept:\n{all}"
        );
        let journal_left = c.s3.head_object().bucket(&bucket).key(&key).send().await;
        assert!(
            journal_left.is_err(),
            "the failed journal is collected:\n{all}"
        );

        // Without a journal, every generation keeps its AMI and the snapshot it maps.
        let (out, log) = gc(false);
        let all = format!("{out}\n{log}");
        for m in [&first, &legacy] {
            assert_eq!(
                state(&c.ec2, m).await,
                [false, true, false, true],
                "without a journal {m:?} keeps its AMI and its snapshot, nothing else:\n{all}"
            );
        }
    })
    .await;
}
