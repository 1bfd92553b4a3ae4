"""`weftctl waypoint status` lists the endpoints each replica's outlier detection ejected,
read from the replicas' config dumps."""

from __future__ import annotations

from weftctl.waypoint_commands import outlier_rows


def test_ejected_endpoints_are_listed_per_replica_and_unreadable_ones_skipped() -> None:
    dump = {
        "destination_rules": {
            "rules": ["demo/echo"],
            "clusters": [
                {
                    "service": "echo.demo.svc.cluster.local",
                    "port": 80,
                    "subset": None,
                    "ejected": [
                        {"endpoint": "10.244.1.5:8080", "times_ejected": 2, "back_in_s": 1.5}
                    ],
                },
                {
                    "service": "other.demo.svc.cluster.local",
                    "port": 80,
                    "subset": "v1",
                    "in_flight": 0,
                },
            ],
        }
    }
    assert outlier_rows({"wp-b": None, "wp-a": dump, "wp-c": {}}) == [
        {
            "pod": "wp-a",
            "service": "echo.demo.svc.cluster.local",
            "subset": "",
            "endpoint": "10.244.1.5:8080",
            "times_ejected": 2,
            "back_in_s": 1.5,
        }
    ]
