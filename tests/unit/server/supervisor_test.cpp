// merge_stats() and merge_metrics(): how --workers sums its workers' answers.
#include "server/supervisor.hpp"

#include <gtest/gtest.h>

namespace rs::server {
namespace {

TEST(MergeStats, SumsNumbersOfLinesWithTheSameLabel) {
  const std::string a =
      "rulesocks 1.0\n"
      "Uptime              : 00:01:00\n"
      "\n"
      "Sessions            : 2 (1 half-open, peak 5)\n"
      "Traffic             : up 1.5 KiB, down 512 B\n"
      "Request rate        : 1.25/s\n";
  const std::string b =
      "rulesocks 1.0\n"
      "Uptime              : 00:00:10\n"
      "\n"
      "Sessions            : 3 (0 half-open, peak 4)\n"
      "Traffic             : up 1.0 KiB, down 1.0 KiB\n"
      "Request rate        : 0.50/s\n";
  EXPECT_EQ(merge_stats({a, b}),
            "rulesocks 1.0\n"
            "Uptime              : 00:01:00\n"
            "\n"
            "Sessions            : 5 (1 half-open, peak 9)\n"
            "Traffic             : up 2.5 KiB, down 1.5 KiB\n"
            "Request rate        : 1.75/s\n");
}

TEST(MergeStats, KeepsTheFirstValueWhenTheWordsDiffer) {
  EXPECT_EQ(merge_stats({"Mode                : fast 1\n", "Mode                : slow 2\n"}),
            "Mode                : fast 1\n");
  // A worker without the line adds nothing.
  EXPECT_EQ(merge_stats({"DNS queries         : 4\nfree text 7\n", "other : 1\n"}),
            "DNS queries         : 4\nfree text 7\n");
}

TEST(MergeMetrics, SumsSamplesAndKeepsFamiliesTogether) {
  const std::string a =
      "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\n"
      "# HELP h Latency.\n# TYPE h histogram\n"
      "h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n"
      "# HELP q Quantiles.\n# TYPE q summary\nq{quantile=\"0.5\"} 0.2\nq_sum 1\nq_count 4\n";
  const std::string b =
      "# HELP x_total X.\n# TYPE x_total counter\nx_total 4\n"
      "# HELP l Labelled.\n# TYPE l counter\nl{k=\"v\"} 1\n"
      "# HELP h Latency.\n# TYPE h histogram\n"
      "h_bucket{le=\"0.1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.25\nh_count 1\n"
      "# HELP q Quantiles.\n# TYPE q summary\nq{quantile=\"0.5\"} 0.4\nq_sum 2\nq_count 1\n";
  EXPECT_EQ(merge_metrics({a, b}, {{"x_total", 42}}),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total 42\n"
            "# HELP h Latency.\n# TYPE h histogram\n"
            "h_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 3\nh_sum 0.75\nh_count 3\n"
            "# HELP q Quantiles.\n# TYPE q summary\nq{quantile=\"0.5\"} 0.4\nq_sum 3\nq_count 5\n"
            "# HELP l Labelled.\n# TYPE l counter\nl{k=\"v\"} 1\n");
}

}  // namespace
}  // namespace rs::server
