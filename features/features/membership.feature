Feature: Cluster membership
  Hosts join and leave clusters one by one, or the member list is replaced as a
  whole with compare-and-swap. A host joins only when it is "active" or
  "disassociated", and belongs to one cluster at most.

  Background:
    Given I have created /api/v0/cluster/$cluster
    And I have created /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "status": "disassociated"}
      """

  Scenario: Add a host to a cluster, check it and remove it
    When I PUT /api/v0/cluster/$cluster/hosts/$host
    Then the response status is 200
    And the response is:
      """
      ["$host"]
      """
    When I GET /api/v0/cluster/$cluster/hosts/$host
    Then the response status is 200
    And the response is:
      """
      ["$host"]
      """
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      ["$host"]
      """
    When I GET /api/v0/cluster/$cluster
    Then the response field "/hosts/total" is 1
    When I DELETE /api/v0/cluster/$cluster/hosts/$host
    Then the response status is 200
    And the response is:
      """
      []
      """
    And GET /api/v0/cluster/$cluster/hosts/$host answers 404
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      []
      """

  Scenario: Adding a member twice is harmless
    Given I have added host $host to cluster $cluster
    When I PUT /api/v0/cluster/$cluster/hosts/$host
    Then the response status is 200
    And the response is:
      """
      ["$host"]
      """
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      ["$host"]
      """

  Scenario: Removing a host that is not a member is harmless
    When I DELETE /api/v0/cluster/$cluster/hosts/$host
    Then the response status is 200
    And the response is:
      """
      []
      """

  Scenario: A host belongs to one cluster only
    Given I have created /api/v0/cluster/$other
    And I have added host $host to cluster $cluster
    When I PUT /api/v0/cluster/$other/hosts/$host
    Then the response status is 409
    And the error message mentions "$cluster"
    When I GET /api/v0/cluster/$other/hosts
    Then the response is:
      """
      []
      """
    When I PUT /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": "$other"}
      """
    Then the response status is 409

  Scenario Outline: A host that is <status> is not ready to join
    Given I have created /api/v0/host/$waiting with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "status": "<status>"}
      """
    When I PUT /api/v0/cluster/$cluster/hosts/$waiting
    Then the response status is 409
    And the error message mentions "not ready"
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      []
      """

    Examples:
      | status        |
      | investigating |
      | bootstrapping |
      | failed        |

  Scenario: A host that was never investigated is not ready to join
    Given I have created /api/v0/host/$new with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU="}
      """
    When I PUT /api/v0/cluster/$cluster/hosts/$new
    Then the response status is 409

  Scenario: Membership of a cluster or a host that does not exist
    When I PUT /api/v0/cluster/$missing/hosts/$host
    Then the response status is 404
    When I PUT /api/v0/cluster/$cluster/hosts/$nohost
    Then the response status is 404
    When I GET /api/v0/cluster/$missing/hosts/$host
    Then the response status is 404
    When I DELETE /api/v0/cluster/$missing/hosts/$host
    Then the response status is 404

  Scenario: Replace the member list
    Given I have created /api/v0/host/$second with:
      """
      {"ssh_priv_key": "c3NoLWtleS10d28=", "status": "active"}
      """
    When I PUT /api/v0/cluster/$cluster/hosts with:
      """
      {"old": [], "new": ["$host", "$second"]}
      """
    Then the response status is 200
    And the response contains:
      """
      {"name": "$cluster", "network": "default"}
      """
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response list contains "$host"
    And the response list contains "$second"
    When I PUT /api/v0/cluster/$cluster/hosts with:
      """
      {"old": ["$second", "$host"], "new": ["$second"]}
      """
    Then the response status is 200
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      ["$second"]
      """

  Scenario: Replacing the member list from a stale copy is a conflict
    Given I have added host $host to cluster $cluster
    When I PUT /api/v0/cluster/$cluster/hosts with:
      """
      {"old": [], "new": []}
      """
    Then the response status is 409
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response is:
      """
      ["$host"]
      """

  Scenario: Replacing the member list needs both lists
    When I PUT /api/v0/cluster/$cluster/hosts with:
      """
      {"new": ["$host"]}
      """
    Then the response status is 400
    And the error message mentions "old"
    When I PUT /api/v0/cluster/$cluster/hosts with:
      """
      {"old": [], "new": "$host"}
      """
    Then the response status is 400
    And the error message mentions "new"
