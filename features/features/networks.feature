Feature: Networks
  A network is the flannel configuration a cluster's hosts use. It is created
  once and then only read, shared by clusters, and deleted when no cluster
  uses it. The server creates the network "default" when it starts.

  Scenario: Create a network and read it back
    When I PUT /api/v0/network/$net with:
      """
      {"type": "flannel_server", "options": {"address": "10.2.0.1:8080"}}
      """
    Then the response status is 201
    And the response is:
      """
      {"name": "$net", "type": "flannel_server", "options": {"address": "10.2.0.1:8080"}}
      """
    When I GET /api/v0/network/$net
    Then the response status is 200
    And the response is:
      """
      {"name": "$net", "type": "flannel_server", "options": {"address": "10.2.0.1:8080"}}
      """

  Scenario: List the networks by name
    Given I have created /api/v0/network/$net
    When I GET /api/v0/networks
    Then the response status is 200
    And the response list contains "$net"
    And the response list contains "default"
    When I GET /api/v0/networks/
    Then the response status is 200
    And the response list contains "$net"

  Scenario: A network without a body gets the defaults
    When I PUT /api/v0/network/$net
    Then the response status is 201
    And the response is:
      """
      {"name": "$net", "type": "flannel_etcd", "options": {}}
      """

  Scenario: Re-creating a network with the same attributes changes nothing
    Given I have created /api/v0/network/$net with:
      """
      {"type": "flannel_etcd"}
      """
    When I PUT /api/v0/network/$net with:
      """
      {"type": "flannel_etcd"}
      """
    Then the response status is 201
    And the response is:
      """
      {"name": "$net", "type": "flannel_etcd", "options": {}}
      """
    When I PUT /api/v0/network/$net with:
      """
      {"name": "$net", "type": "flannel_etcd", "options": {}}
      """
    Then the response status is 201

  Scenario: Re-creating a network with other attributes is a conflict
    Given I have created /api/v0/network/$net with:
      """
      {"type": "flannel_etcd"}
      """
    When I PUT /api/v0/network/$net with:
      """
      {"type": "flannel_server", "options": {"address": "10.0.0.1:8080"}}
      """
    Then the response status is 409
    And the error message mentions "$net"
    When I GET /api/v0/network/$net
    Then the response field "/type" is "flannel_etcd"

  Scenario: A network type that does not exist is refused and nothing is stored
    When I PUT /api/v0/network/$net with:
      """
      {"type": "vxlan"}
      """
    Then the response status is 400
    And the error message mentions "type"
    And GET /api/v0/network/$net answers 404

  Scenario: A name in the body that differs from the URL is refused
    When I PUT /api/v0/network/$net with:
      """
      {"name": "$other", "type": "flannel_etcd"}
      """
    Then the response status is 400
    And the error message mentions "name"
    And GET /api/v0/network/$net answers 404
    And GET /api/v0/network/$other answers 404

  Scenario: A network that does not exist
    When I GET /api/v0/network/$missing
    Then the response status is 404
    When I DELETE /api/v0/network/$missing
    Then the response status is 404

  Scenario: Delete a network
    Given I have created /api/v0/network/$net
    When I DELETE /api/v0/network/$net
    Then the response status is 200
    And the response is:
      """
      []
      """
    And GET /api/v0/network/$net answers 404
    When I GET /api/v0/networks
    Then the response list does not contain "$net"

  Scenario: A network that a cluster uses cannot be deleted
    Given I have created /api/v0/network/$net
    And I have created /api/v0/cluster/$cluster with:
      """
      {"network": "$net"}
      """
    When I DELETE /api/v0/network/$net
    Then the response status is 409
    And the error message mentions "$cluster"
    And GET /api/v0/network/$net answers 200
    When I DELETE /api/v0/cluster/$cluster
    Then the response status is 200
    When I DELETE /api/v0/network/$net
    Then the response status is 200
