Feature: Clients at the same time
  Many clients may act on the same records at once (retrying scripts,
  self-registering hosts, several operators). Whatever the interleaving, every
  answer must be true and the stored state consistent.

  Scenario: Clients that add the same host at the same time all succeed
    Given I have created /api/v0/cluster/$cluster
    When 8 clients PUT /api/v0/host/$host at the same time with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": "$cluster"}
      """
    Then every response status is 201
    When I GET /api/v0/host/$host/creds
    Then the response status is 200
    And the response field "/ssh_priv_key" is "c3NoLWtleS1vbmU="
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      ["$host"]
      """

  Scenario: Many hosts registering into one cluster at the same time all join it
    Given I have created /api/v0/cluster/$cluster
    When the hosts $host1 to $host100 are created in the cluster $cluster at the same time
    Then every response status is 201
    And the cluster $cluster has exactly the hosts $host1 to $host100

  Scenario: Of clients that add the same host with different keys, one wins
    When 8 clients PUT /api/v0/host/$host at the same time, each with a key of its own
    Then exactly 1 of the responses has status 201 and the others 409
    And the credentials of $host are those the successful client sent

  Scenario: Concurrent requests never put a host in two clusters
    Given I have created /api/v0/cluster/$left
    And I have created /api/v0/cluster/$right
    And I have created hosts $host1 to $host8 with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "status": "disassociated"}
      """
    When I add each of the hosts $host1 to $host8 to the clusters $left and $right at the same time
    Then each of the hosts $host1 to $host8 is a member of at most one of the clusters $left and $right
    And every request that answered 200 added its host and every one that answered 409 did not

  Scenario: Concurrent member list replacements never put a host in two clusters
    Given I have created /api/v0/cluster/$left
    And I have created /api/v0/cluster/$right
    And I have created hosts $host1 to $host4 with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "status": "active"}
      """
    When I set the members of the clusters $left and $right to the hosts $host1 to $host4 at the same time
    Then each of the hosts $host1 to $host4 is a member of at most one of the clusters $left and $right
    And a cluster whose new member list was accepted has all of the hosts $host1 to $host4
