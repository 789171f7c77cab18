Feature: Clusters
  A cluster groups hosts on one network, optionally with a container manager.
  Its status is computed from its members each time it is read: "ok" when all
  are active (or there are none), "failed" when none is, "degraded" otherwise.

  Scenario: Create a cluster on the default network
    When I PUT /api/v0/cluster/$cluster
    Then the response status is 201
    And the response is:
      """
      {"name": "$cluster", "status": "", "network": "default", "container_manager": ""}
      """
    And the response has no field "/hostset"

  Scenario: Create a cluster on a network with a container manager
    Given I have created /api/v0/network/$net
    And I have created /api/v0/containermanager/$cm with:
      """
      {"type": "trivial"}
      """
    When I PUT /api/v0/cluster/$cluster with:
      """
      {"network": "$net", "container_manager": "$cm"}
      """
    Then the response status is 201
    And the response is:
      """
      {"name": "$cluster", "status": "", "network": "$net", "container_manager": "$cm"}
      """
    When I GET /api/v0/cluster/$cluster
    Then the response status is 200
    And the response contains:
      """
      {"name": "$cluster", "network": "$net", "container_manager": "$cm", "status": "ok",
       "hosts": {"total": 0, "available": 0, "unavailable": 0}}
      """

  Scenario: Re-creating a cluster with the same attributes keeps its members
    Given I have created /api/v0/cluster/$cluster
    And I have created /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": "$cluster"}
      """
    When I PUT /api/v0/cluster/$cluster with:
      """
      {"network": "default"}
      """
    Then the response status is 201
    And the response has no field "/hostset"
    When I GET /api/v0/cluster/$cluster/hosts
    Then the response status is 200
    And the response is:
      """
      ["$host"]
      """

  Scenario: Re-creating a cluster on another network is a conflict
    Given I have created /api/v0/network/$net
    And I have created /api/v0/cluster/$cluster
    When I PUT /api/v0/cluster/$cluster with:
      """
      {"network": "$net"}
      """
    Then the response status is 409
    And the error message mentions "$cluster"
    When I GET /api/v0/cluster/$cluster
    Then the response field "/network" is "default"

  Scenario: A cluster on a network that does not exist is refused
    When I PUT /api/v0/cluster/$cluster with:
      """
      {"network": "$nonet"}
      """
    Then the response status is 409
    And the error message mentions "$nonet"
    And GET /api/v0/cluster/$cluster answers 404

  Scenario: A cluster with a container manager that does not exist is refused
    When I PUT /api/v0/cluster/$cluster with:
      """
      {"container_manager": "$nocm"}
      """
    Then the response status is 409
    And the error message mentions "$nocm"
    And GET /api/v0/cluster/$cluster answers 404

  Scenario: A name in the body that differs from the URL is refused
    When I PUT /api/v0/cluster/$cluster with:
      """
      {"name": "$other"}
      """
    Then the response status is 400
    And the error message mentions "name"
    And GET /api/v0/cluster/$cluster answers 404
    And GET /api/v0/cluster/$other answers 404

  Scenario: A cluster body with an unknown field is refused
    When I PUT /api/v0/cluster/$cluster with:
      """
      {"hostset": ["10.0.0.1"]}
      """
    Then the response status is 400
    And the error message mentions "hostset"
    And GET /api/v0/cluster/$cluster answers 404

  Scenario: The cluster's status and host counters follow its members
    Given I have created /api/v0/cluster/$cluster
    When I GET /api/v0/cluster/$cluster
    Then the response status is 200
    And the response field "/status" is "ok"
    And the response field "/hosts" is {"total": 0, "available": 0, "unavailable": 0}
    Given I have created /api/v0/host/$active with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "status": "active", "cluster": "$cluster"}
      """
    When I GET /api/v0/cluster/$cluster
    Then the response field "/status" is "ok"
    And the response field "/hosts" is {"total": 1, "available": 1, "unavailable": 0}
    Given I have created /api/v0/host/$idle with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "status": "disassociated", "cluster": "$cluster"}
      """
    When I GET /api/v0/cluster/$cluster
    Then the response field "/status" is "degraded"
    And the response field "/hosts" is {"total": 2, "available": 1, "unavailable": 1}
    When I DELETE /api/v0/host/$active
    Then the response status is 200
    When I GET /api/v0/cluster/$cluster
    Then the response field "/status" is "failed"
    And the response field "/hosts" is {"total": 1, "available": 0, "unavailable": 1}

  Scenario: List the clusters by name
    Given I have created /api/v0/cluster/$first
    And I have created /api/v0/cluster/$second
    When I GET /api/v0/clusters
    Then the response status is 200
    And the response list contains "$first"
    And the response list contains "$second"
    When I GET /api/v0/clusters/
    Then the response list contains "$first"
    When I GET /api/v0/cluster/
    Then the response status is 200
    And the response list contains "$first"
    And the response list contains "$second"

  Scenario: Delete a cluster
    Given I have created /api/v0/cluster/$cluster
    When I DELETE /api/v0/cluster/$cluster
    Then the response status is 200
    And the response is:
      """
      []
      """
    And GET /api/v0/cluster/$cluster answers 404
    When I GET /api/v0/clusters
    Then the response list does not contain "$cluster"

  Scenario: Deleting a cluster leaves its hosts in place
    Given I have created /api/v0/cluster/$cluster
    And I have created /api/v0/host/$host with:
      """
      {"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": "$cluster"}
      """
    When I DELETE /api/v0/cluster/$cluster
    Then the response status is 200
    And GET /api/v0/host/$host answers 200

  Scenario: A cluster that does not exist
    When I GET /api/v0/cluster/$missing
    Then the response status is 404
    When I DELETE /api/v0/cluster/$missing
    Then the response status is 404
    When I GET /api/v0/cluster/$missing/hosts
    Then the response status is 404
